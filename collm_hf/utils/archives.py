"""Images inside zip and tar archives: read in place, or extracted safely.

CIRR's and LLaVA-Pretrain's images ship as archives. `ImageArchive` reads members in place (no extraction,
no temporary files), decoding them through `image_io.open_image` so a broken member raises `ImageReadError`
naming `archive::member`. `safe_extract` unpacks an archive all or nothing: absolute paths, `..` components,
members or links that resolve outside the target folder (through the archive's own links), device files and
oversized members are refused with `UnsafeArchiveError` naming the member before anything is written; the archive
is extracted into a temporary folder beside the target and renamed into place.

Example:
    >>> with ImageArchive("dev.zip") as archive:  # doctest: +SKIP
    ...     image = archive.open_image("dev/dev-0-0-img0.png")
"""

import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
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


# Links followed while resolving one path before it counts as a loop (the kernel's ELOOP limit).
MAX_LINK_HOPS = 40


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":")


def _resolve(links: dict[str, str], path: str, where: str, subject: str) -> str:
    """Resolve `path` (relative to the archive's root) through the archive's own symbolic links, as the file system
    will once they exist; raise `UnsafeArchiveError` about `subject` (e.g. "member 'a/b'") if it leaves the root."""
    parts, pending, hops = [], path.replace("\\", "/").split("/"), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchiveError(f"{where}: {subject} resolves outside the target folder")
            parts.pop()
            continue
        candidate = "/".join(parts + [part])
        if candidate in links:
            hops += 1
            link = links[candidate]
            if hops > MAX_LINK_HOPS:
                raise UnsafeArchiveError(f"{where}: {subject}: too many levels of links (a loop?)")
            if not link or _is_absolute(link):
                raise UnsafeArchiveError(f"{where}: {subject} goes through the link {candidate!r} to {link!r}, "
                                         "outside the target folder")
            pending = link.replace("\\", "/").split("/") + pending  # relative to the link's folder: `parts`
            continue
        parts.append(part)
    return "/".join(parts)


def _check_members(entries: list[tuple[str, str, str | None]], where: str) -> None:
    """Check where every member lands and where every link leads, through the archive's own symbolic links.

    Args:
        entries: (clean member name, kind, link) with kind "symlink", "hardlink" or "other".
    """
    links = {name: link for name, kind, link in entries if kind == "symlink"}
    regular = {name for name, kind, _ in entries if kind == "other"}
    for name, kind, link in entries:
        folder = posixpath.dirname(name)
        _resolve(links, folder, where, f"member {name!r}")  # the folder the member is written into
        if kind == "symlink":
            if not link or _is_absolute(link):
                raise UnsafeArchiveError(f"{where}: member {name!r} is a link to {link!r}, outside the target folder")
            _resolve(links, posixpath.join(folder, link.replace("\\", "/")), where,
                     f"member {name!r}, a link to {link!r},")
        elif kind == "hardlink":
            if _resolve(links, link, where, f"member {name!r}, a hard link to {link!r},") not in regular:
                raise UnsafeArchiveError(f"{where}: member {name!r} is a hard link to {link!r}, which is no file of "
                                         "the archive")


def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise UnsafeArchiveError(f"{path}: not a zip or tar archive")


def _check_extracted(root: Path, where: str) -> None:
    """Every extracted path resolves inside `root` (what the checks before extraction guarantee, proven on disk)."""
    root = root.resolve()
    for folder, names, files in os.walk(root):
        for name in names + files:
            resolved = (Path(folder) / name).resolve()
            if resolved != root and root not in resolved.parents:
                raise UnsafeArchiveError(f"{where}: member {os.path.relpath(Path(folder) / name, root)!r} resolves "
                                         "outside the target folder")


def _move_into(source: Path, target: Path) -> None:
    """Rename `source`'s entries into `target`: folders merge, files replace (each one `os.replace`)."""
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and destination.is_dir() and not destination.is_symlink():
            _move_into(entry, destination)
        else:
            os.replace(entry, destination)


def _read_entries(archive, kind: str, where: str, max_member_bytes: int) -> tuple[list, list]:
    """(members, [(clean name, kind, link)]) of an open archive; a bad name, device or size raises."""
    entries = []
    members = archive.infolist() if kind == "zip" else archive.getmembers()
    for member in members:
        raw = member.filename if kind == "zip" else member.name
        name = check_member_name(raw, where)
        size = member.file_size if kind == "zip" else member.size
        if kind == "tar" and (member.isdev() or member.isfifo()):
            raise UnsafeArchiveError(f"{where}: member {raw!r} is a device or FIFO")
        if size > max_member_bytes:
            raise UnsafeArchiveError(f"{where}: member {raw!r} is {size} bytes uncompressed (limit {max_member_bytes})")
        if kind == "zip" and _is_zip_link(member):  # zipfile writes links as small text files; still checked
            entries.append((name, "symlink", _zip_link_target(archive, member)))
        elif kind == "tar" and member.issym():
            entries.append((name, "symlink", member.linkname))
        elif kind == "tar" and member.islnk():
            entries.append((name, "hardlink", check_member_name(member.linkname, where)))
        else:
            entries.append((name, "other", None))
    return members, entries


def safe_extract(archive_path: str | os.PathLike, target_dir: str | os.PathLike,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> list[str]:
    """Extract a zip or tar archive into `target_dir`, all or nothing.

    Every member is checked first: its name, its size, where it lands and where a link leads once the archive's
    own links exist (a chain such as `s -> .`, `l -> s/../x` is followed, not read lexically). The archive is then
    extracted into a temporary folder beside `target_dir`, checked again on disk, and renamed into place: a
    `target_dir` that did not exist appears in one rename; into an existing folder each entry is renamed in
    (folders merge, files are replaced). Nothing reaches `target_dir` when any member is refused.

    Args:
        archive_path: a .zip, .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz file.
        target_dir: the folder to extract into (created if needed).
        max_member_bytes: refuse members larger than this once uncompressed.

    Returns:
        The extracted member names (relative posix paths), in archive order.

    Raises:
        UnsafeArchiveError: a member has an absolute path or a `..` component, lands or links outside
            `target_dir`, is a device/FIFO, or is larger than `max_member_bytes`; or the extraction refused a
            member. Nothing is extracted in that case.
    """
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise FileNotFoundError(f"archive not found: {archive_path}")
    target = Path(target_dir).absolute()
    if target.exists() and (target.is_symlink() or not target.is_dir()):
        raise UnsafeArchiveError(f"{archive_path}: the target {target} exists and is not a folder")
    kind = _archive_kind(archive_path)
    where = str(archive_path)
    with (zipfile.ZipFile(archive_path) if kind == "zip" else tarfile.open(archive_path)) as archive:
        members, entries = _read_entries(archive, kind, where, max_member_bytes)
        _check_members(entries, where)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
        try:
            try:
                if kind == "zip":
                    archive.extractall(staging, members=members)
                else:  # Python's "data" filter repeats the checks and drops unsafe permission bits
                    archive.extractall(staging, members=members, filter="data")
            except (tarfile.TarError, OSError) as error:  # tarfile.FilterError included
                raise UnsafeArchiveError(f"{where}: extraction refused a member ({type(error).__name__}: "
                                         f"{error})") from error
            _check_extracted(staging, where)
            if target.exists():
                _move_into(staging, target)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [name for name, _, _ in entries if name != "."]


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


class ArchiveMember:
    """One file of an `ImageArchive`, read when needed: `read_bytes()` and `name` as a `pathlib.Path` offers them,
    so that a dataset writer embeds it like an image file on disk without holding the bytes before then."""

    def __init__(self, archive: ImageArchive, member: str):
        self.archive, self.member = archive, member

    @property
    def name(self) -> str:
        return posixpath.basename(_key(self.member))

    def read_bytes(self) -> bytes:
        return self.archive.read_bytes(self.member)

    def __repr__(self) -> str:
        return f"{self.archive.path}::{self.member}"


__all__ = ["ArchiveMember", "ImageArchive", "UnsafeArchiveError", "check_member_name", "safe_extract",
           "MAX_MEMBER_BYTES"]
