"""ipsp: an embeddable IPsec (ESP, RFC 4303) engine.

The per-packet work happens in the Cython kernel :mod:`fastpath`; this package owns
security associations, configuration and the command line.
"""

from ipsp._version import __version__
from ipsp.config import load_config, load_sa_file
from ipsp.engine import Engine
from ipsp.errors import ConfigError, IpsecError, PacketError
from ipsp.sa import SAConfig, Selector, sa_from_mapping
from ipsp.transforms import PROPOSALS, Transform, parse_proposal

__all__ = [
    "__version__", "Engine", "load_config", "load_sa_file", "ConfigError", "IpsecError", "PacketError", "SAConfig",
    "Selector", "sa_from_mapping", "PROPOSALS", "Transform", "parse_proposal",
]
