"""The IKE tests' sibling helper modules, loaded by path once (the suite runs with
--import-mode=importlib, where tests/ike is not on sys.path): ``strongswan`` (charon in
namespaces), ``ike_pki`` (a test PKI), ``ike_loop`` (two in-process daemons)."""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str, filename: str) -> None:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module            # before exec: dataclasses look their module up
        spec.loader.exec_module(module)


for _name, _file in (("strongswan", "strongswan.py"), ("ike_pki", "pki.py"), ("ike_loop", "loop.py")):
    _load(_name, _file)
