import sys

from ipsp.cli import main

sys.exit(main())
