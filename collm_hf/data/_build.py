"""What every builder shares: options, strict JSON reading, image validation, error collection, image values.

A build is: read the official annotation files -> check them (ids unique, targets in the gallery, every
referenced image present and decodable) -> with `allow_missing`, drop the rows whose images are bad and
record them -> stream rows through `write_dataset`. Nothing is written before the checks pass.

The images come from a folder or, read in place, from one zip or tar archive (`utils.archives.ImageArchive`):
e.g. LLaVA-Pretrain's `images.zip` or COCO's `unlabeled2017.zip`, as downloaded.
"""

import dataclasses
import json
import os
import posixpath
from contextlib import contextmanager
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..models.collm.image_io import ImageReadError, open_image
from ..utils.archives import ArchiveMember, ImageArchive, UnsafeArchiveError

# Image checks run in threads: PIL releases the GIL while decoding.
DEFAULT_CHECK_WORKERS = min(8, os.cpu_count() or 1)
CHECK_BLOCK = 2048
# How many problems an error message spells out (all of them for images: each must be fixed).
MAX_LISTED_PROBLEMS = 50


class DatasetBuildError(ValueError):
    """The raw files cannot be built into a dataset; the message names every offending item."""


class MissingImagesError(DatasetBuildError):
    """Referenced images are missing or cannot be decoded. `problems` maps each file to its reason."""

    def __init__(self, problems: Mapping[str, str]):
        self.problems = dict(problems)
        lines = [f"  {path}: {reason}" for path, reason in sorted(self.problems.items())]
        super().__init__(f"{len(self.problems)} referenced image(s) are missing or unreadable "
                         "(nothing was written; pass --allow-missing to drop their rows):\n" + "\n".join(lines))


@dataclass
class BuildOptions:
    """How to build, shared by every builder (the CLI flags of `dataset_scripts/build_*.py`).

    Args:
        output_dir: the finished dataset folder (written atomically).
        images_dir: the image files, laid out as the annotations reference them: a folder, or a zip / tar
            archive read in place (nothing is extracted). Required unless `no_images`; with `no_images` it is
            optional and, if given, still used to check the images.
        push_to_hub: a dataset repo id to upload the finished folder to.
        no_images: publish annotations only: image columns keep the relative path, no bytes
            (`local_images.attach_images` resolves them against a local folder at load time).
        allow_missing: drop rows whose images are missing or broken (recorded in the card) instead of failing.
        rows_per_shard: rows per Parquet file.
        check_workers: threads decoding images during validation.
        decode_check: fully decode every image during validation (not only check it exists).
        archive_root: inside an archive `images_dir`, the folder the annotations' paths start from
            (`choose_image_root` and the builders set it, e.g. "unlabeled2017").
    """

    output_dir: str | os.PathLike
    images_dir: str | os.PathLike | None = None
    push_to_hub: str | None = None
    no_images: bool = False
    allow_missing: bool = False
    rows_per_shard: int = 1000
    check_workers: int = DEFAULT_CHECK_WORKERS
    decode_check: bool = True
    splits: list[str] | None = None  # build only these splits (default: every split found)
    extra_card: dict = field(default_factory=dict)
    archive_root: str = ""
    archive: ImageArchive | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.images_dir is None and not self.no_images:
            raise DatasetBuildError("an images folder is required (--images-dir), unless --no-images")
        if self.images_dir is not None:
            self.images_dir = Path(self.images_dir)
            if self.images_dir.is_file():
                try:
                    self.archive = ImageArchive(self.images_dir)
                except UnsafeArchiveError as error:
                    raise DatasetBuildError(f"images: {self.images_dir} is neither a folder nor a zip or tar "
                                            "archive") from error
            elif not self.images_dir.is_dir():
                raise DatasetBuildError(f"images folder not found: {self.images_dir}")

    @property
    def check_images(self) -> bool:
        return self.images_dir is not None

    def _member(self, relative: str) -> str:
        return posixpath.join(self.archive_root, normalise_relative(relative)) if self.archive_root else str(relative)

    def has_image(self, relative: str) -> bool:
        """Whether the images folder (or archive) holds a file at `relative`."""
        if self.archive is not None:
            return self._member(relative) in self.archive
        return is_file(Path(self.images_dir) / relative)

    def open_image(self, relative: str):
        """Decode the image at `relative` (`ImageReadError` naming it if it cannot be)."""
        if self.archive is not None:
            return self.archive.open_image(self._member(relative))
        return open_image(Path(self.images_dir) / relative)

    def within(self, folder: str) -> "BuildOptions":
        """These options with the images' root moved down into `folder`, if the folder (archive) holds it."""
        if self.archive is not None:
            prefix = posixpath.join(self.archive_root, folder) + "/"
            if any(name.startswith(prefix) for name in self.archive.names()):
                return dataclasses.replace(self, archive_root=prefix.rstrip("/"))
            return self
        if self.images_dir is not None and (Path(self.images_dir) / folder).is_dir():
            return dataclasses.replace(self, images_dir=Path(self.images_dir) / folder)
        return self

    def image_value(self, relative: str):
        """The value of an image column for a file referenced as `relative` (posix, under `images_dir`)."""
        if ".." in str(relative).replace("\\", "/").split("/"):
            raise DatasetBuildError(f"image path {relative!r} contains '..' and would leave the images folder")
        if self.no_images:
            return {"bytes": None, "path": relative}
        if self.archive is not None:
            return ArchiveMember(self.archive, self._member(relative))  # read when the writer embeds it
        return str(Path(self.images_dir) / relative)


@contextmanager
def utf8_errors(path, what: str = "file"):
    """Turn a `UnicodeDecodeError` while reading `path` into a `DatasetBuildError` naming it."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DatasetBuildError(f"{what} {path} is not UTF-8 text ({error})") from error


def read_json(path: str | os.PathLike, what: str):
    """Load a JSON file; a missing file, bad JSON or a duplicated object key raises `DatasetBuildError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetBuildError(f"{what} not found: {path}")

    def no_duplicates(pairs):
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1}) if len(set(keys)) != len(keys) else []
        if duplicates:
            raise DatasetBuildError(f"{path}: duplicated key(s) {duplicates[:MAX_LISTED_PROBLEMS]}")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as handle, utf8_errors(path, what):
            return json.load(handle, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise DatasetBuildError(f"{what} {path} is not valid JSON ({error})") from error


def value_problem(value, kind: str) -> str | None:
    """Why `value` is not a valid `kind` ("id": an int or a non-empty string; "text": a non-empty string)."""
    if kind == "id":
        if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip()):
            return None
        return f"must be an id (an integer or a non-empty string), got {value!r:.60}"
    if isinstance(value, str) and value.strip():
        return None
    return f"must be a non-empty string, got {value!r:.60}"


def expect_list_of_dicts(data, path, required: Iterable[str], kinds: Mapping[str, str] | None = None) -> list[dict]:
    """Check `data` is a list of dicts each holding `required` keys, and that the keys in `kinds` hold ids or
    texts (`value_problem`): a null id or caption is never written as "None"; raise one error naming every bad entry."""
    if not isinstance(data, list):
        raise DatasetBuildError(f"{path}: expected a JSON list, got {type(data).__name__}")
    required = list(required)
    problems = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            problems.append(f"[{index}] is {type(entry).__name__}, not an object")
            continue
        missing = [key for key in required if key not in entry]
        if missing:
            problems.append(f"[{index}] lacks {missing}")
        for key, kind in (kinds or {}).items():
            problem = value_problem(entry[key], kind) if key in entry else None
            if problem:
                problems.append(f"[{index}] {key} {problem}")
    raise_problems(problems, f"{path}: malformed entries")
    return data


def raise_problems(problems: list[str], title: str) -> None:
    """Raise one `DatasetBuildError` listing `problems` (up to MAX_LISTED_PROBLEMS, then a count), if any."""
    if not problems:
        return
    listed = "\n".join(f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    raise DatasetBuildError(f"{title} ({len(problems)}):\n{listed}{more}")


def duplicates(values: Iterable[str]) -> list[str]:
    """Values that occur more than once, in first-seen order."""
    seen, repeated = set(), {}
    for value in values:
        if value in seen:
            repeated[value] = None
        seen.add(value)
    return list(repeated)


def check_image_files(relative_paths: Iterable[str], options: BuildOptions) -> dict[str, str]:
    """Check that each image exists and decodes; return {relative path: reason} for the bad ones.

    Every file is checked (not only up to the first failure), in `options.check_workers` threads.
    Returns {} when there is no images folder to check (annotation-only builds without `images_dir`).
    """
    if not options.check_images:
        return {}
    root = Path(options.images_dir)
    paths = list(dict.fromkeys(relative_paths))

    def check(relative: str) -> str | None:
        path = f"{root}::{options._member(relative)}" if options.archive is not None else root / relative
        try:
            if ".." in str(relative).replace("\\", "/").split("/"):  # symlinks inside the folder are fine
                return f"outside the images folder: '..' in {relative!r}"
            if not options.has_image(relative):
                return f"missing ({path})"
        except (OSError, ValueError) as error:  # e.g. a name too long for the file system, a NUL byte
            return f"unusable path ({type(error).__name__}: {error})"
        if not options.decode_check:
            return None
        try:
            options.open_image(relative).close()
        except (ImageReadError, KeyError) as error:
            return f"cannot decode ({path}: {str(error).split(': ', 1)[-1]})"
        return None

    problems = {}
    with ThreadPoolExecutor(max_workers=max(1, options.check_workers)) as pool:
        # `Executor.map` makes every future up front: feed it in blocks so memory stays flat for 400K images.
        for start in range(0, len(paths), CHECK_BLOCK):
            block = paths[start:start + CHECK_BLOCK]
            problems.update((relative, reason) for relative, reason in zip(block, pool.map(check, block))
                            if reason is not None)
    return problems


def settle_missing(problems: dict[str, str], options: BuildOptions) -> set[str]:
    """Fail on bad images unless `allow_missing`; return the set of bad relative paths (rows to drop)."""
    if problems and not options.allow_missing:
        raise MissingImagesError(problems)
    return set(problems)


def is_file(path) -> bool:
    """`Path.is_file`, False for a path the file system cannot even look up (name too long, NUL byte)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def choose_image_root(options: BuildOptions, relative_paths: list[str], sample: int = 20) -> BuildOptions:
    """Return `options` with `images_dir` moved to whichever of `images_dir`, `images_dir/images`,
    `images_dir/..` holds the most of the first `sample` referenced files (LLaVA-Pretrain image paths are
    written both with and without the leading `images/`); inside an archive, its root or its `images/` folder."""
    if options.images_dir is None or not relative_paths:
        return options
    if options.archive is not None:
        probe = relative_paths[:sample]
        inside = options.within("images")
        if inside is not options and sum(map(inside.has_image, probe)) > sum(map(options.has_image, probe)):
            return inside
        return options
    root = Path(options.images_dir)
    probe = relative_paths[:sample]
    candidates = [root, root / "images", root.parent]
    hits = [sum(is_file(candidate / path) for path in probe) for candidate in candidates]
    best = max(range(len(candidates)), key=lambda index: (hits[index], -index))
    if best == 0 or hits[best] == hits[0]:
        return options
    return dataclasses.replace(options, images_dir=candidates[best])


def normalise_relative(path: str) -> str:
    """'./dev/x.png' or 'dev\\x.png' -> 'dev/x.png' (posix, no leading './')."""
    path = str(path).replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def base_card(options: BuildOptions, **fields) -> dict:
    """Card fields shared by every builder, plus an annotation-only note when `no_images`."""
    card = dict(fields)
    notes = [card.pop("extra", "")]
    if options.no_images:
        notes.append("**Annotations only** (`--no-images`): image columns hold the relative file path and no bytes. "
                     "Attach your local copy of the images at load time:\n\n```python\n"
                     "from collm_hf.data.local_images import attach_images\n"
                     "ds = attach_images(load_dataset(repo, \"queries\", split=\"val\"), \"/path/to/images\")\n```")
    notes.append(options.extra_card.get("extra", ""))
    card.update({key: value for key, value in options.extra_card.items() if key != "extra"})
    card["extra"] = "\n\n".join(note for note in notes if note)
    return card
