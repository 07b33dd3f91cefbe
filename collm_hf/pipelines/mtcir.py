"""Generate an MTCIR-style triplet dataset from image-caption pairs, for any domain (CoLLM §4.1).

This makes a new dataset with an LLM; `collm_hf.data.mtcir.build_mtcir` builds the official MTCIR from its files.

    pairs (image_id, image, caption)
      --ImageEmbedder-->  embeddings                      work_dir/embeddings-<embedder, inputs>.safetensors
      --group_images-->   groups of 6, pairs inside them  work_dir/run-<settings, inputs>/plan.json
      --generator-->      forward/backward texts per pair work_dir/run-<settings, inputs>/shards/shard-XXXXX.json
      --write_dataset-->  triplets + images (+ card)      output_dir (atomic)

Resuming: every stage's result is written atomically (temp file, then `os.replace`) and every later run
reuses what exists, so a killed run continues at the first unfinished shard and loses at most the shard in
flight. A shard's replies depend only on its own pairs (fixed batches, seeded retries), so a resumed run
writes exactly what an uninterrupted run writes, with no duplicates. Work made from other inputs or with other
settings never mixes in: each run folder `run-<digest>` is keyed by the settings (window, generator, prompt, ...)
and by the inputs (the pairs dataset's ids, captions and `datasets` fingerprint, which changes when its files or
rows change, and the embedder's identity: a digest of the vision weights and image-processor settings), with a
`settings.json` saying what it was made with. Edited pairs therefore get a fresh plan; the embeddings of the same
inputs are shared by every set of settings. Every cache is JSON or safetensors: nothing is unpickled.

Rows written (schema `triplet_features()`): one `triplets` row per (pair, direction, category), with every
text of that category in `modifications`; `direction` is "forward" (a -> b) or "backward" (b -> a).
`images` holds each image used once, with its original bytes.

Example:
    >>> report = generate_mtcir(pairs, embedder, generator, "out/mtcir")  # doctest: +SKIP
    >>> report.category_counts  # doctest: +SKIP
    {'attribute': 812, 'object_added': 390, ...}
"""

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import DatasetBuildError
from ..data.schema import IMAGES_CONFIG, TRIPLETS_CONFIG, triplet_features
from ..data.writer import write_dataset
from ..utils.atomic import atomic_write, atomic_write_json
from .generation import (
    CATEGORIES,
    DEFAULT_WORD_LIMIT,
    ParsedReply,
    apply_privacy_filter,
    build_messages,
    parse_modifications,
)
from .grouping import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_HIGH,
    DEFAULT_LOW,
    DEFAULT_NUM_CANDIDATES,
    group_images,
    pairs_from_groups,
)


@dataclass
class MTCIROptions:
    """How to generate (the flags of `dataset_scripts/generate_mtcir.py`).

    Args:
        group_size: images per group (6 in the paper); smaller groups are dropped.
        low, high: similarity window of every member to the group's first image.
        num_candidates: nearest neighbours examined per group seed.
        shard_size: pairs per shard (the unit of resumable work).
        max_retries: extra attempts (seeded sampling) for a pair whose reply has nothing usable.
        word_limit: texts must have fewer words than this.
        privacy_filter: drop texts describing people's attributes (the paper's privacy filter).
        max_pairs: stop after this many pairs (a quick trial); None = all.
    """

    group_size: int = DEFAULT_GROUP_SIZE
    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    shard_size: int = 64
    max_retries: int = 2
    word_limit: int = DEFAULT_WORD_LIMIT
    privacy_filter: bool = True
    max_pairs: int | None = None


@dataclass
class MTCIRReport:
    """Counts of a generation run (also rendered into the dataset card)."""

    num_images: int = 0
    num_groups: int = 0
    num_pairs: int = 0
    num_pairs_kept: int = 0
    num_triplets: int = 0
    num_texts: int = 0
    category_counts: dict = field(default_factory=dict)  # texts per category (forward + backward)
    rejections: dict = field(default_factory=dict)  # rejected replies / items per reason, over all attempts
    dropped_pairs: dict = field(default_factory=dict)  # pairs without any usable text, per last reason
    retries: int = 0
    reply_status: dict = field(default_factory=dict)  # final replies: ok / partial / failed
    similarity_quantiles: dict = field(default_factory=dict)  # pairwise image similarity (to choose the window)
    missing_shards: int = 0  # shards other workers have not finished yet (then nothing was written)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def inputs_digest(pairs, ids: list[str], captions: list[str]) -> str:
    """What the plan is made from: the pairs' ids and captions (in row order) and the dataset's fingerprint (which
    `datasets` derives from its files or rows, so edited images change it too)."""
    return _digest({"fingerprint": getattr(pairs, "_fingerprint", None), "ids": ids, "captions": captions})


def embedder_identity(embedder) -> str:
    """The embedder's `identity` (a digest of what decides its embeddings, see `ImageEmbedder.identity`), or its
    name for an embedder that has none."""
    identity = getattr(embedder, "identity", None)
    return str(identity) if identity else f"name:{getattr(embedder, 'name', '?')}"


# ----------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------
def _check_pairs(pairs) -> tuple[list[str], list[str]]:
    missing = [name for name in ("image_id", "image", "caption") if name not in pairs.column_names]
    if missing:
        raise DatasetBuildError(f"the pairs dataset lacks column(s) {missing}; it has {pairs.column_names}")
    ids, captions = [str(i) for i in pairs["image_id"]], list(pairs["caption"])
    seen, repeated = set(), []
    for image_id in ids:
        if image_id in seen:
            repeated.append(image_id)
        seen.add(image_id)
    if repeated:
        raise DatasetBuildError(f"duplicated image_id(s) in the pairs dataset: {repeated[:20]}")
    empty = [image_id for image_id, text in zip(ids, captions) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise DatasetBuildError(f"image(s) without a caption: {empty[:20]}")
    return ids, captions


def run_folder(work_dir: Path, settings: dict) -> Path:
    """The work folder of one set of settings (`run-<digest>`, with its `settings.json`)."""
    folder = work_dir / f"run-{_digest(settings)}"
    if not (folder / "settings.json").exists():
        atomic_write_json(folder / "settings.json", settings, indent=1, sort_keys=True)
    return folder


def similarity_quantiles(embeds: torch.Tensor, sample: int = 2000) -> dict:
    """Quantiles of the cosine similarity between distinct images (of the first `sample`): what to choose the
    grouping window from when the tower is not CLIP (the paper's 0.5-0.95 is a CLIP window)."""
    block = embeds[:sample]
    sims = (block @ block.T)[~torch.eye(len(block), dtype=torch.bool)]  # (n * (n - 1),)
    if sims.numel() == 0:
        return {}
    levels = (0.01, 0.1, 0.5, 0.9, 0.99)
    values = torch.quantile(sims[:1_000_000].float(), torch.tensor(levels))
    return {f"q{int(level * 100):02d}": round(float(value), 4) for level, value in zip(levels, values)}


def _embeddings(pairs, embedder, ids: list[str], key: dict, work_dir: Path, progress: bool) -> torch.Tensor:
    """The image embeddings of `pairs`, computed once per embedder and inputs (`embeddings-<key>.safetensors`)."""
    path = work_dir / f"embeddings-{_digest(key)}.safetensors"
    if path.exists():
        embeds = load_file(path)["embeddings"]
        if len(embeds) == len(ids):
            return embeds
    images = pairs.select_columns(["image"])
    embeds = embedder.embed((row["image"] for row in images), total=len(ids), progress=progress)  # (n, dim)
    embeds = embeds.detach().float().cpu().contiguous()
    metadata = {key_name: str(value) for key_name, value in key.items()}
    atomic_write(path, lambda temp: save_file({"embeddings": embeds}, temp, metadata=metadata))
    return embeds


def plan_pairs(pairs, embedder, options: MTCIROptions, work_dir: Path, run_dir: Path, progress: bool = False,
               checked: tuple[list[str], list[str]] | None = None) -> dict:
    """Embed (once per embedder and inputs, in `work_dir`), group, list the pairs to describe (in `run_dir`).

    `run_dir` must be keyed by the inputs (`inputs_digest`): a plan found there is reused as it is.
    `checked` is `(ids, captions)` when the caller already read them (`_check_pairs`).

    Returns:
        {"image_ids": [...], "captions": [...], "groups": [[id, ...]], "pairs": [[a, b], ...]}.
    """
    plan_path = run_dir / "plan.json"
    if plan_path.exists():
        return json.loads(plan_path.read_text())
    ids, captions = checked or _check_pairs(pairs)
    key = {"embedder": embedder_identity(embedder), "inputs": inputs_digest(pairs, ids, captions)}
    embeds = _embeddings(pairs, embedder, ids, key, work_dir, progress)
    groups = group_images(embeds, options.group_size, options.low, options.high, options.num_candidates)
    id_groups = [[ids[i] for i in group] for group in groups]
    pair_list = [list(pair) for pair in pairs_from_groups(id_groups)]
    if options.max_pairs is not None:
        pair_list = pair_list[: options.max_pairs]
    plan = {"image_ids": ids, "captions": captions, "groups": id_groups, "pairs": pair_list,
            "similarity_quantiles": similarity_quantiles(embeds)}
    atomic_write_json(plan_path, plan)
    return plan


def describe_pairs(pair_captions: list[tuple[str, str]], generator, options: MTCIROptions) -> list[dict]:
    """Ask the generator for the texts of each pair, retrying pairs whose reply has nothing usable.

    Args:
        pair_captions: [(caption_a, caption_b)] of the pairs.
        generator: `generate(conversations, attempt) -> list[str]` (e.g. `TransformersGenerator`).
        options: retries, word limit, privacy filter.

    Returns:
        one record per pair: {"modifications": [{category, forward, backward}], "status", "problems"
        (every rejection over all attempts), "attempts"}.
    """
    records = [{"modifications": [], "status": "failed", "problems": [], "attempts": 0} for _ in pair_captions]
    pending = list(range(len(pair_captions)))
    for attempt in range(options.max_retries + 1):
        if not pending:
            break
        conversations = [build_messages(*pair_captions[i], word_limit=options.word_limit) for i in pending]
        replies = generator.generate(conversations, attempt=attempt)
        if len(replies) != len(conversations):
            raise RuntimeError(f"the generator returned {len(replies)} replies for {len(conversations)} prompts")
        still_pending = []
        for index, reply in zip(pending, replies):
            parsed: ParsedReply = parse_modifications(reply, options.word_limit)
            if options.privacy_filter:
                parsed = apply_privacy_filter(parsed)
            record = records[index]
            record["attempts"] = attempt + 1
            record["problems"] += parsed.problems
            record["status"] = parsed.status
            if parsed.modifications:
                record["modifications"] = [asdict(m) for m in parsed.modifications]
            else:
                still_pending.append(index)
        pending = still_pending
    return records


def generate_shards(plan: dict, generator, options: MTCIROptions, work_dir: Path, progress: bool = False,
                    worker: tuple[int, int] = (0, 1)) -> int:
    """Describe the pairs of the plan, shard by shard, skipping finished shards; worker `(k, n)` takes the shards
    `i` with `i % n == k`. Returns the number of shards generated."""
    caption_of = dict(zip(plan["image_ids"], plan["captions"]))
    pairs = plan["pairs"]
    shard_dir = work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    num_shards = (len(pairs) + options.shard_size - 1) // options.shard_size
    index, count = worker
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} is not in [0, {count})")
    done = 0
    for shard in tqdm(range(index, num_shards, count), desc="generating", unit="shard", disable=not progress):
        path = shard_dir / f"shard-{shard:05d}.json"
        if path.exists():
            continue
        shard_pairs = pairs[shard * options.shard_size:(shard + 1) * options.shard_size]
        records = describe_pairs([(caption_of[a], caption_of[b]) for a, b in shard_pairs], generator, options)
        for (a, b), record in zip(shard_pairs, records):
            record.update(reference=a, target=b)
        atomic_write_json(path, records)
        done += 1
    return done


def _missing_shards(plan: dict, options: MTCIROptions, work_dir: Path) -> list[int]:
    num_shards = (len(plan["pairs"]) + options.shard_size - 1) // options.shard_size
    return [i for i in range(num_shards) if not (work_dir / "shards" / f"shard-{i:05d}.json").exists()]


def _load_records(plan: dict, options: MTCIROptions, work_dir: Path) -> list[dict]:
    num_shards = (len(plan["pairs"]) + options.shard_size - 1) // options.shard_size
    records = []
    for shard in range(num_shards):
        path = work_dir / "shards" / f"shard-{shard:05d}.json"
        if not path.exists():
            raise RuntimeError(f"shard {path} is missing; run the generation stage first")
        records += json.loads(path.read_text())
    return records


def triplet_rows(records: list[dict], report: MTCIRReport) -> list[dict]:
    """`triplets` rows from the pair records: one per (pair, direction, category); fills `report`'s counts."""
    rows, categories, rejections, dropped, status = [], Counter(), Counter(), Counter(), Counter()
    for index, record in enumerate(records):
        rejections.update(record["problems"])
        status[record["status"]] += 1
        report.retries += max(0, record["attempts"] - 1)
        if not record["modifications"]:
            dropped[record["problems"][-1] if record["problems"] else "empty"] += 1
            continue
        report.num_pairs_kept += 1
        for direction, source, target in (("forward", record["reference"], record["target"]),
                                          ("backward", record["target"], record["reference"])):
            for category in CATEGORIES:  # fixed category order: rows are the same in every run
                texts = [m[direction] for m in record["modifications"] if m["category"] == category]
                if texts:
                    rows.append({"id": f"{index}-{direction}-{category}", "reference_id": source, "target_id": target,
                                 "modifications": texts, "direction": direction, "category": category})
                    categories[category] += len(texts)
    report.num_triplets, report.num_texts = len(rows), sum(categories.values())
    report.category_counts = {name: categories[name] for name in CATEGORIES}
    report.rejections, report.dropped_pairs, report.reply_status = dict(rejections), dict(dropped), dict(status)
    return rows


def _card(report: MTCIRReport, options: MTCIROptions, generator_info: dict, embedder_name: str) -> dict:
    prompt = build_messages("{caption of image A}", "{caption of image B}", options.word_limit)
    total = max(1, report.num_texts)
    lines = [
        "## How it was made", "",
        (f"MTCIR-style pipeline of `collm_hf.pipelines.mtcir` (CoLLM §4.1): images embedded with `{embedder_name}`, "
        f"greedy groups of {options.group_size} (similarity to the group's first image in "
        f"[{options.low}, {options.high}], {options.num_candidates} candidates per seed), pairs = consecutive members "
        "and first-to-every-member; texts written by an instruct LLM, forward and backward."), "",
        (f"- images: {report.num_images:,}; groups: {report.num_groups:,}; pairs: {report.num_pairs:,} "
        f"(kept {report.num_pairs_kept:,}); triplet rows: {report.num_triplets:,}; texts: {report.num_texts:,}"),
        f"- pairwise image similarity quantiles: {json.dumps(report.similarity_quantiles)}",
        (f"- privacy filter: {'on' if options.privacy_filter else 'off'}; word limit: fewer than {options.word_limit} "
        f"words; retries per pair: {options.max_retries} (used {report.retries:,})"), "",
        "### Generator", "", "```json", json.dumps(generator_info, indent=1), "```", "",
        "### Prompt", "", "```json", json.dumps(prompt, indent=1), "```", "",
        "### Texts per category", "", "| category | texts | share |", "|---|---|---|",
        *[f"| {name} | {count:,} | {100 * count / total:.1f} % |" for name, count in report.category_counts.items()], "",
        "### Rejections and drops", "",
        "Rejected replies or items, per reason, over all attempts (a retried pair can count more than once):", "",
        "| reason | count |", "|---|---|",
        *[f"| {reason} | {count:,} |" for reason, count in sorted(report.rejections.items())], "",
        f"Pairs dropped (no usable text after every retry), per last reason: {json.dumps(report.dropped_pairs)}", "",
        f"Final reply status: {json.dumps(report.reply_status)}",
    ]
    return {"pretty_name": "MTCIR-style triplets", "extra": "\n".join(lines), "tags": ["composed-image-retrieval", "mtcir"],
            "description": "Composed image retrieval triplets (reference image, modification texts, target image) "
                           "written by an instruct LLM from the captions of pairs of similar images."}


def generate_mtcir(pairs, embedder, generator, output_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None,
                   options: MTCIROptions | None = None, progress: bool = False, push_to_hub: str | None = None,
                   worker: tuple[int, int] = (0, 1)) -> MTCIRReport:
    """The whole pipeline: pairs dataset -> MTCIR-style dataset folder (`triplets` + `images`, with a card).

    Args:
        pairs: a `datasets.Dataset` in the pairs schema (`image_id`, `image`, `caption`).
        embedder: an `ImageEmbedder` (any vision tower of the package, or a CoLLM's gallery side).
        generator: `generate(conversations, attempt=0) -> list[str]`, e.g. `TransformersGenerator`; an
            optional `describe() -> dict` goes into the card.
        output_dir: the finished dataset folder (written atomically, at the end).
        work_dir: resumable intermediate results (default: `<output_dir>.work` beside it); safe to delete
            once the dataset is written.
        options: `MTCIROptions`.
        progress: tqdm bars.
        push_to_hub: a dataset repo id to upload the result to.
        worker: `(k, n)`: this process generates the shards `i % n == k` (one process per GPU, same arguments
            otherwise); whichever worker finds every shard done writes the dataset (the others return a report
            with `missing_shards` > 0). Identical plans make the workers agree without talking to each other.

    Returns:
        `MTCIRReport` with the counts the card shows.
    """
    options = options or MTCIROptions()
    output_dir = Path(output_dir)
    work_dir = Path(work_dir) if work_dir else output_dir.with_name(output_dir.name + ".work")
    generator_info = generator.describe() if hasattr(generator, "describe") else {"generator": type(generator).__name__}
    ids, captions = _check_pairs(pairs)
    settings = {"options": asdict(options), "generator": generator_info, "embedder": getattr(embedder, "name", "?"),
                "embedder_identity": embedder_identity(embedder), "inputs": inputs_digest(pairs, ids, captions),
                "prompt": _digest(build_messages("a", "b", options.word_limit))}
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = run_folder(work_dir, settings)
    plan = plan_pairs(pairs, embedder, options, work_dir, run_dir, progress, checked=(ids, captions))
    if plan["image_ids"] != ids:  # the run folder is keyed by these ids: only a hand-edited plan gets here
        raise DatasetBuildError(f"{run_dir / 'plan.json'} was made from other pairs; delete {run_dir} and rerun")
    report = MTCIRReport(num_images=len(plan["image_ids"]), num_groups=len(plan["groups"]), num_pairs=len(plan["pairs"]),
                         similarity_quantiles=plan.get("similarity_quantiles", {}))
    if not plan["pairs"]:
        raise DatasetBuildError(f"no group of {options.group_size} images has every member's similarity to its first "
                                f"image in [{options.low}, {options.high}]; image similarities have quantiles "
                                f"{report.similarity_quantiles}: choose the window from them (--low / --high)")
    generate_shards(plan, generator, options, run_dir, progress, worker)
    report.missing_shards = len(_missing_shards(plan, options, run_dir))
    if report.missing_shards:
        return report
    rows = triplet_rows(_load_records(plan, options, run_dir), report)
    used = set()
    for row in rows:
        used.update((row["reference_id"], row["target_id"]))
    position = {image_id: index for index, image_id in enumerate(ids)}  # rows of this `pairs` dataset
    raw = pairs.cast_column("image", Image(decode=False))  # keep the original bytes, no re-encoding
    keep = sorted(position[image_id] for image_id in used)
    image_rows = ({"image_id": str(row["image_id"]), "image": row["image"]}
                  for row in raw.select(keep).select_columns(["image_id", "image"]))
    write_dataset(output_dir, {TRIPLETS_CONFIG: {"train": rows}, IMAGES_CONFIG: {"train": image_rows}},
                  triplet_features(), _card(report, options, generator_info, settings["embedder"]),
                  push_to_hub=push_to_hub)
    return report
