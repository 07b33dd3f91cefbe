"""Atomic file writes: write to a temporary file beside the target, then `os.replace` it into place.

A crash, Ctrl-C or SIGKILL mid-write leaves either the old file or the new one, never a torn one; the temporary
file is removed on any error. `atomic_folder` does the same for a folder written in one go (a saved model); dataset
builds, written shard by shard and resumable, have their own in `data/writer.py`.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then move it to `path`.

    Example:
        >>> atomic_write("out.png", lambda tmp: image.save(tmp, format="PNG"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, **dump_kwargs) -> Path:
    """Write `obj` as JSON atomically (`dump_kwargs` as `json.dumps`)."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` on a new folder beside `path`, then put it in `path`'s place (replacing what was there).

    The temporary folder is removed on any error, so `path` never holds half a folder.

    Example:
        >>> atomic_folder("model", model.save_pretrained)  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
