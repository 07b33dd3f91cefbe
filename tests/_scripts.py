"""Import a command-line script of the repository (examples/, dataset_scripts/, model_card/) as a module; the
prelude of a script that must run without the package (hub remote code)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path):
    """Load `path` (absolute, or relative to the repository root) as a fresh module and return it."""
    path = Path(path)
    path = path if path.is_absolute() else ROOT / path
    spec = importlib.util.spec_from_file_location(f"_collm_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Put first in a `python -c` script: from then on, importing collm_hf (or any of its modules) raises ImportError, so
# what the script loads with `trust_remote_code` provably comes from the checkpoint folder alone.
WITHOUT_PACKAGE = """import builtins
_real_import = builtins.__import__
def _guarded(name, *args, **kwargs):
    if name == "collm_hf" or name.startswith("collm_hf."):
        raise ImportError("collm_hf must not be imported in this test")
    return _real_import(name, *args, **kwargs)
builtins.__import__ = _guarded
"""
