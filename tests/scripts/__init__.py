"""Tests of the runnable tools in scripts/."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")


def load_script(filename: str, module_name: str) -> ModuleType:
    """Import ``scripts/<filename>`` (not a package) as module ``module_name``."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(SCRIPTS_DIR, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
