"""Fixtures and shared helpers for the fastpath kernel tests.

The suite runs with --import-mode=importlib, so test modules cannot import a sibling helper
module by name; this conftest (always imported before the modules next to it) loads
``_support.py`` once and registers it as ``fp_support``.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

_NAME = "fp_support"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("_support.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _mod
    _spec.loader.exec_module(_mod)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS
