"""Import a command-line script of the repository (examples/, dataset_scripts/, model_card/) as a module."""

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
