"""Images inside zip and tar archives: read in place, or extracted safely.

CIRR's and LLaVA-Pretrain's images ship as archives. `ImageArchive` reads members in place (no extraction,
no temporary files), decoding them through `image_io.open_image` so a broken member raises `ImageReadError`
naming `archive::member`. `safe_extract` unpacks an archive only after checking every member: absolute
paths, `..` components, links that resolve outside the target folder, device files, and oversized members
are refused with `UnsafeArchiveError` naming the member, and nothing is written when any member is bad.

Example:
    >>> with ImageArchive("dev.zip") as archive:  # doctest: +SKIP
    ...     image = archive.open_image("dev/dev-0-0-img0.png")
"""

import io
import os
import posixpath
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

from ..models.collm.image_io import ImageReadError, open_image

# A member larger than this (uncompressed) is refused: a zip bomb must not fill memory or disk.
MAX_MEMBER_BYTES = 1 << 30
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder (or is a device, or is oversized); names it."""


def _is_zip_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    return archive.read(info).decode("utf-8", errors="replace")


def check_member_name(name: str, where: str) -> str:
    """Return `name` as a clean relative posix path, or raise `UnsafeArchiveError` naming it.

    Refused: empty names, NUL bytes, absolute paths (`/x`, `\\x`, `C:x`), and any `..` component (with `/` or
    `\\` as separator, so a Windows-made archive cannot escape either).
    """
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{where}: member name {name!r} is empty or holds a NUL byte")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or parts[0] == "":
        raise UnsafeArchiveError(f"{where}: member {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}: member {name!r} contains '..' and could escape the target folder")
    return posixpath.normpath("/".join(p for p in parts if p not in ("", ".")) or ".")


def _key(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/")


def _inside(target: Path, relative: str) -> bool:
    resolved = (target / relative).resolve()
    return resolved == target or target in resolved.parents


def _check_link(target: Path, member: str, link: str, where: str, hard: bool = False) -> None:
    """A link's destination must stay inside `target` (symlinks resolve from the member's folder)."""
    if not link or link.startswith(("/", "\\")) or (len(link) > 1 and link[1] == ":"):
        raise UnsafeArchiveError(f"{where}: member {member!r} is a link to {link!r}, outside the target folder")
    base = "" if hard else posixpath.dirname(member)
    joined = posixpath.normpath(posixpath.join(base, link.replace("\\", "/")))
    if joined.startswith("..") or not _inside(target, joined):
        raise UnsafeArchiveError(f"{where}: member {member!r} is a link to {link!r}, outside the target folder")


def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise UnsafeArchiveError(f"{path}: not a zip or tar archive")


def safe_extract(archive_path: str | os.PathLike, target_dir: str | os.PathLike,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> list[str]:
    """Extract a zip or tar archive into `target_dir` after checking every member.

    Args:
        archive_path: a .zip, .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz file.
        target_dir: the folder to extract into (created if needed).
        max_member_bytes: refuse members larger than this once uncompressed.

    Returns:
        The extracted member names (relative posix paths), in archive order.

    Raises:
        UnsafeArchiveError: a member has an absolute path, a `..` component, a link leaving `target_dir`,
            is a device/FIFO, or is larger than `max_member_bytes`. Nothing is extracted in that case.
    """
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise FileNotFoundError(f"archive not found: {archive_path}")
    target = Path(target_dir).resolve()
    kind = _archive_kind(archive_path)
    where = str(archive_path)
    names = []
    if kind == "zip":
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            for info in infos:
                name = check_member_name(info.filename, where)
                if _is_zip_link(info):  # zipfile writes links as small text files; still refuse escaping ones
                    _check_link(target, name, _zip_link_target(archive, info), where)
                if info.file_size > max_member_bytes:
                    raise UnsafeArchiveError(f"{where}: member {info.filename!r} is {info.file_size} bytes "
                                             f"uncompressed (limit {max_member_bytes})")
                names.append(name)
            target.mkdir(parents=True, exist_ok=True)
            for info in infos:
                archive.extract(info, target)
        return [n for n in names if n != "."]
    with tarfile.open(archive_path) as archive:
        members = archive.getmembers()
        for member in members:
            name = check_member_name(member.name, where)
            if member.issym():
                _check_link(target, name, member.linkname, where)
            elif member.islnk():
                check_member_name(member.linkname, where)
                _check_link(target, name, member.linkname, where, hard=True)
            elif member.isdev() or member.isfifo():
                raise UnsafeArchiveError(f"{where}: member {member.name!r} is a device or FIFO")
            elif member.size > max_member_bytes:
                raise UnsafeArchiveError(f"{where}: member {member.name!r} is {member.size} bytes "
                                         f"(limit {max_member_bytes})")
            names.append(name)
        target.mkdir(parents=True, exist_ok=True)
        # Python's own "data" filter repeats these checks and drops unsafe permission bits.
        archive.extractall(target, members=members, filter="data")
    return [n for n in names if n != "."]


class ImageArchive:
    """Read image files from a zip or tar archive in place (thread-safe; reopen after pickling).

    Args:
        path: the archive file.
        max_member_bytes: refuse members larger than this (uncompressed).

    Example:
        >>> archive = ImageArchive("train.zip")  # doctest: +SKIP
        >>> names = archive.image_names()  # doctest: +SKIP
        >>> archive.open_image(names[0]).mode  # doctest: +SKIP
        'RGB'
    """

    def __init__(self, path: str | os.PathLike, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"archive not found: {self.path}")
        self.kind = _archive_kind(self.path)
        self.max_member_bytes = max_member_bytes
        self._handle = None
        self._members: dict[str, object] | None = None
        self._lock = threading.Lock()

    def _open(self):
        if self._handle is None:
            if self.kind == "zip":
                self._handle = zipfile.ZipFile(self.path)
                infos = [i for i in self._handle.infolist() if not i.is_dir() and not _is_zip_link(i)]
            else:
                self._handle = tarfile.open(self.path)
                infos = [m for m in self._handle.getmembers() if m.isfile()]
            members = {}
            for info in infos:
                raw = info.filename if self.kind == "zip" else info.name
                try:
                    members[check_member_name(raw, str(self.path))] = info
                except UnsafeArchiveError:
                    continue  # unreachable names are simply not offered
            self._members = members
        return self._handle

    def names(self) -> list[str]:
        """Every regular file in the archive (clean relative posix paths), in archive order."""
        with self._lock:
            self._open()
            return list(self._members)

    def image_names(self) -> list[str]:
        """The members whose names end in an image suffix."""
        return [n for n in self.names() if n.lower().endswith(IMAGE_SUFFIXES)]

    def __contains__(self, name: str) -> bool:
        with self._lock:
            self._open()
            return _key(name) in self._members

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of member `name`; `KeyError` naming it if absent."""
        where = f"{self.path}::{name}"
        with self._lock:
            handle = self._open()
            info = self._members.get(_key(name))
            if info is None:
                raise KeyError(f"{where}: no such file in the archive")
            size = info.file_size if self.kind == "zip" else info.size
            if size > self.max_member_bytes:
                raise ImageReadError(f"{where}: {size} bytes uncompressed (limit {self.max_member_bytes})")
            try:
                if self.kind == "zip":
                    return handle.read(info)
                return handle.extractfile(info).read()
            except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as error:
                raise ImageReadError(f"{where}: cannot read member ({type(error).__name__}: {error})") from error

    def open_image(self, name: str):
        """Decode member `name` into an RGB PIL image; `ImageReadError` naming `archive::member` if it cannot."""
        return open_image(io.BytesIO(self.read_bytes(name)), name=f"{self.path}::{name}")

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
            self._handle, self._members = None, None

    def __enter__(self) -> "ImageArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "kind": self.kind, "max_member_bytes": self.max_member_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._handle, self._members, self._lock = None, None, threading.Lock()


__all__ = ["ImageArchive", "UnsafeArchiveError", "check_member_name", "safe_extract", "MAX_MEMBER_BYTES"]
