"""Suite-wide setup."""

import importlib.util
import sys
import warnings
from pathlib import Path

# the namespace tests' shared helpers (tests/nslib.py), importable as "nslib" (the suite runs
# with --import-mode=importlib, where tests/ is not on sys.path)
# and the hostile-input corpus (tests/hostile/corpus.py), importable as "hostile"
for _name, _file in (("nslib", Path(__file__).with_name("nslib.py")),
                     ("hostile", Path(__file__).parent / "hostile" / "corpus.py")):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, _file)
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])

# When a Hypothesis test fails, its pytest plugin imports hypothesis.extra._patching (libcst,
# mypy_extensions) to suggest a patch; that import emits a DeprecationWarning which the
# project's filterwarnings=error turns into an INTERNALERROR hiding the real failure.
# Import it once here, warnings silenced, so failures are reported normally.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - optional dependency chain
        pass
