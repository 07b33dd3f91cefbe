"""A synthetic world: seeded datasets of scenes of coloured shapes, in the project's schema (`collm_hf.data.schema`).

The embedded default dataset of the quickstart and the tests. Everything is a pure, deterministic function of a
seed, so the same seed always gives the same rows and images, with nothing to download. Scenes, captions and edits
come from `synthetic_scenes`; this module turns them into:

- `pair_rows`: image-caption pairs for pre-training;
- `triplet_rows` + `image_rows`: MTCIR-style triplets, several modification texts per pair, grouped as MTCIR
  groups similar images (one reference, several edits of it);
- `cirr_rows`: a CIRR-style benchmark: one precise text per query, `subset_ids` = the raw six members of a set
  of similar images (reference, target, a sibling edit of the same attribute and three other edits);
- `circo_rows`: a CIRCO-style benchmark: one loose text per query, every rendered member of the family a
  ground truth, with hard negatives (the reference, other edits of it) and text-only matches in the gallery.

Both galleries hold distractors that match the text but not the reference (the edited object in another
scene) and the reverse (other edits of the reference). `write_world` writes them all through the datasets
writer. Example:

    >>> rows = list(pair_rows(WorldConfig.tiny()))
    >>> len(rows), sorted(rows[0])
    (400, ['caption', 'image', 'image_id'])
"""

import random
from dataclasses import dataclass

from .synthetic_scenes import (
    ASPECTS,
    BACKGROUNDS,
    COLOURS,
    EDITS,
    POSITIONS,
    SHAPES,
    SIZES,
    caption,
    edits_of,
    pick_texts,
    random_edit,
    render,
    sample_scene,
    text_distractor,
)

# ---------------------------------------------------------------------------------------------------------------
# Rows in the project's schema
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WorldConfig:
    """Sizes of the synthetic world. The defaults make tens of thousands of pairs in well under a minute."""

    seed: int = 0
    image_size: int = 48
    num_pairs: int = 20000  # image-caption pairs for pre-training
    num_groups: int = 4000  # triplet groups: one reference and `edits_per_group` edits of it
    edits_per_group: int = 5
    texts_per_triplet: int = 4  # precise texts per triplet (plus the loose one where it has one)
    num_cirr_queries: int = 500  # one set of six similar images per query
    num_circo_queries: int = 300
    circo_max_targets: int = 5  # ground truths rendered per CIRCO-style query
    max_objects: int = 3  # objects in a sampled scene (edits that add one may make it one more, up to 4)
    # Training groups draw their edits in same-category twins (`edits_of(twins=True)`): "remove the circle" next
    # to "remove the square" of the same scene, so each batch holds the hard negatives a CIRR set holds
    # (measured with the quickstart: docs/quickstart_recipe.md).
    twin_edits: bool = True
    # How often the training groups draw each edit category, over `EDIT_WEIGHTS` (e.g. {"remove": 4}); the
    # benchmarks always use `EDIT_WEIGHTS`.
    training_edit_weights: dict | None = None
    # A training row also lists the loose text of a sibling edit in the same group whose family holds its target
    # ("make the red circle a different colour" on the row that makes it green): the row's texts are then all the
    # texts it answers, which the triplet collator needs to keep a valid answer out of a query's negatives
    # (`CoLLMTripletCollator.mask_shared_texts`).
    sibling_loose_texts: bool = True

    def __post_init__(self):
        unknown = sorted(set(self.training_edit_weights or {}) - set(EDITS))
        if unknown:
            raise ValueError(f"training_edit_weights names unknown edit categories {unknown}; known: {sorted(EDITS)}")

    @classmethod
    def tiny(cls, seed: int = 0) -> "WorldConfig":
        return cls(seed=seed, num_pairs=400, num_groups=80, num_cirr_queries=40, num_circo_queries=30)


def _rng(config: WorldConfig, part: str) -> random.Random:
    # One stream per part: growing one part never changes another.
    return random.Random(f"{config.seed}-{part}")


def pair_rows(config: WorldConfig):
    """Yield image-caption pairs {"image_id", "image", "caption"} for pre-training (distinct scenes)."""
    rng, seen = _rng(config, "pairs"), set()
    while len(seen) < config.num_pairs:
        scene = sample_scene(rng, max_objects=config.max_objects)
        if scene.key not in seen:
            seen.add(scene.key)
            yield {"image_id": scene.image_id, "image": render(scene, config.image_size), "caption": caption(scene)}


def triplet_scenes(config: WorldConfig):
    """Yield (triplet row, reference scene, target scene) for MTCIR-style triplets, grouped by reference."""
    rng = _rng(config, "triplets")
    for g in range(config.num_groups):
        scene = sample_scene(rng, max_objects=config.max_objects)
        edits = edits_of(rng, scene, config.edits_per_group, twins=config.twin_edits, weights=config.training_edit_weights)
        for k, edit in enumerate(edits):
            texts = pick_texts(rng, edit.texts, config.texts_per_triplet)
            # Loose texts: the edit's own, and a sibling's whose family holds this target (the sibling "make the
            # red circle a different colour" fits this edit's green circle too), so every row lists what it answers.
            siblings = [e for e in edits if e is not edit] if config.sibling_loose_texts else []
            fitting = [edit] + [e for e in siblings if edit.target.key in {s.key for s in e.family}]
            for loose_text in [e.loose_text for e in fitting if e.loose_text]:
                if loose_text not in texts:
                    texts.append(loose_text)
            row = {"id": f"syn-{config.seed}-{g}-{k}", "reference_id": scene.image_id, "target_id": edit.target.image_id,
                   "modifications": texts, "direction": "forward", "category": edit.category}
            yield row, scene, edit.target


def triplet_rows(config: WorldConfig):
    """Yield the `triplets` config rows."""
    for row, _, _ in triplet_scenes(config):
        yield row


def image_rows(config: WorldConfig):
    """Yield the `images` config rows: every reference and target of `triplet_rows`, once."""
    seen = set()
    for _, *scenes in triplet_scenes(config):
        for scene in scenes:
            if scene.image_id not in seen:
                seen.add(scene.image_id)
                yield {"image_id": scene.image_id, "image": render(scene, config.image_size)}


def _benchmark_part(config: WorldConfig, name: str) -> random.Random:
    return _rng(config, name)


def cirr_scenes(config: WorldConfig) -> tuple[list, dict]:
    """The CIRR-style benchmark as scenes: (queries, gallery {image_id: Scene})."""
    rng, queries, gallery = _benchmark_part(config, "cirr"), [], {}
    while len(queries) < config.num_cirr_queries:
        reference = sample_scene(rng, min_objects=2, max_objects=max(2, config.max_objects))
        main = random_edit(rng, reference)
        if main is None:
            continue
        members = [reference, main.target]
        sibling = [s for s in main.family if s.key not in {m.key for m in members}]
        if sibling:
            members.append(rng.choice(sibling))
        for edit in edits_of(rng, reference, 8):
            if len(members) == 6:
                break
            if edit.target.key not in {m.key for m in members}:
                members.append(edit.target)
        if len(members) < 6:
            continue
        distractor = text_distractor(rng, main)
        for scene in members + [distractor]:
            gallery[scene.image_id] = scene
        order = rng.sample(members, 6)
        queries.append({
            "query_id": str(len(queries)), "reference": reference, "modification_text": rng.choice(main.texts),
            "target": main.target, "subset": order, "category": main.category,
        })
    return queries, gallery


def circo_scenes(config: WorldConfig) -> tuple[list, dict]:
    """The CIRCO-style benchmark as scenes: (queries with all valid targets, gallery {image_id: Scene})."""
    rng, queries, gallery = _benchmark_part(config, "circo"), [], {}
    while len(queries) < config.num_circo_queries:
        reference = sample_scene(rng, min_objects=2, max_objects=max(2, config.max_objects))
        main = random_edit(rng, reference, loose=True)
        if main is None:
            continue
        k = min(len(main.family), rng.randint(2, config.circo_max_targets))
        targets = [main.target] + rng.sample([s for s in main.family if s.key != main.target.key], k - 1)
        negatives = [reference] + [e.target for e in edits_of(rng, reference, 3)
                                   if e.target.key not in {s.key for s in main.family}][:2]
        negatives += [text_distractor(rng, main) for _ in range(2)]
        for scene in targets + negatives:
            gallery[scene.image_id] = scene
        shared = main.subject or "scene"
        queries.append({
            "query_id": str(len(queries)), "reference": reference, "modification_text": main.loose_text,
            "family": main.family, "target": main.target, "shared_concept": shared, "category": main.category,
        })
    # Ground truths: every gallery image in the family, also one that another query put there.
    for q in queries:
        q["targets"] = [s for s in q["family"] if s.image_id in gallery]
    return queries, gallery


def cirr_rows(config: WorldConfig) -> tuple[list, list]:
    """(queries rows, gallery rows) of the CIRR-style benchmark, `queries_features("cirr")` schema."""
    queries, gallery = cirr_scenes(config)
    query_rows = [{
        "query_id": q["query_id"], "reference_id": q["reference"].image_id,
        "reference_image": render(q["reference"], config.image_size), "modification_text": q["modification_text"],
        "target_ids": [q["target"].image_id], "subset_ids": [s.image_id for s in q["subset"]],
    } for q in queries]
    return query_rows, _gallery_rows(gallery, config)


def circo_rows(config: WorldConfig) -> tuple[list, list]:
    """(queries rows, gallery rows) of the CIRCO-style benchmark, `queries_features("circo")` schema.
    `target_ids[0]` is the target the text was written for (as CIRCO's `target_img_id`)."""
    queries, gallery = circo_scenes(config)
    query_rows = []
    for q in queries:
        others = [s.image_id for s in q["targets"] if s.key != q["target"].key]
        query_rows.append({
            "query_id": q["query_id"], "reference_id": q["reference"].image_id,
            "reference_image": render(q["reference"], config.image_size), "modification_text": q["modification_text"],
            "target_ids": [q["target"].image_id] + others, "shared_concept": q["shared_concept"],
            "semantic_aspects": [ASPECTS[q["category"]]],
        })
    return query_rows, _gallery_rows(gallery, config)


def _gallery_rows(gallery: dict, config: WorldConfig) -> list:
    return [{"image_id": i, "image": render(s, config.image_size)} for i, s in sorted(gallery.items())]


# Benchmark splits: CIRR-style queries and gallery are `val`; the CIRCO-style gallery is one split shared by
# its queries, named as CIRCO's (`collm_hf.data.circo`).
CIRR_SPLIT, CIRCO_QUERY_SPLIT, CIRCO_GALLERY_SPLIT = "val", "val", "unlabeled2017"
WORLD_PARTS = ("pairs", "mtcir", "cirr", "circo")


def write_world(output_dir, config: WorldConfig | None = None, parts=WORLD_PARTS, workers: int = 1) -> dict:
    """Write the world through the datasets writer: `<output_dir>/{pairs,mtcir,cirr,circo}`, each a dataset
    folder loadable with `datasets.load_dataset(folder, "<config>")`.

    Args:
        output_dir: parent folder of the four datasets.
        config: sizes and seed (default `WorldConfig()`).
        parts: which of "pairs", "mtcir", "cirr", "circo" to write.
        workers: write this many parts at once, in threads (each part has its own random stream, so the files are
            the same; Pillow's resizing and PNG encoding release the GIL). The quickstart's `metrics.json`
            records the time as `world_s`: 18-26 s with 2 workers on 2 CPU cores against 32-41 s with 1.

    Returns:
        {part: Path of its dataset folder}.
    """
    from pathlib import Path

    unknown = [p for p in parts if p not in WORLD_PARTS]
    if unknown:
        raise ValueError(f"unknown synthetic world part(s) {unknown}; expected some of {WORLD_PARTS}")
    if workers > 1 and len(parts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(parts))) as pool:
            futures = {part: pool.submit(write_world, output_dir, config, [part]) for part in parts}
            return {part: future.result()[part] for part, future in futures.items()}

    from .schema import (GALLERY_CONFIG, IMAGES_CONFIG, PAIRS_CONFIG, PAIRS_FEATURES, QUERIES_CONFIG,
                         TRIPLETS_CONFIG, benchmark_features, triplet_features)
    from .writer import write_dataset

    config = config or WorldConfig()
    root, written = Path(output_dir), {}
    card = {"license": "apache-2.0", "source": f"collm_hf.data.synthetic_world, {config}",
            "description": "A synthetic world of coloured shapes, made by collm_hf (deterministic for a seed)."}
    if "pairs" in parts:
        written["pairs"] = write_dataset(root / "pairs", {PAIRS_CONFIG: {"train": pair_rows(config)}},
                                         {PAIRS_CONFIG: PAIRS_FEATURES}, dict(card, pretty_name="Synthetic pairs"))
    if "mtcir" in parts:
        written["mtcir"] = write_dataset(
            root / "mtcir", {TRIPLETS_CONFIG: {"train": triplet_rows(config)}, IMAGES_CONFIG: {"train": image_rows(config)}},
            triplet_features(), dict(card, pretty_name="Synthetic MTCIR-style triplets"))
    if "cirr" in parts:
        queries, gallery = cirr_rows(config)
        written["cirr"] = write_dataset(
            root / "cirr", {QUERIES_CONFIG: {CIRR_SPLIT: queries}, GALLERY_CONFIG: {CIRR_SPLIT: gallery}},
            benchmark_features("cirr"), dict(card, pretty_name="Synthetic CIRR-style benchmark"))
    if "circo" in parts:
        queries, gallery = circo_rows(config)
        written["circo"] = write_dataset(
            root / "circo", {QUERIES_CONFIG: {CIRCO_QUERY_SPLIT: queries}, GALLERY_CONFIG: {CIRCO_GALLERY_SPLIT: gallery}},
            benchmark_features("circo"), dict(card, pretty_name="Synthetic CIRCO-style benchmark"))
    return written


def world_corpus() -> list:
    """Sentences that hold every word the world uses (to train a tokenizer on the world's vocabulary)."""
    rng, lines = random.Random(0), [" ".join(SHAPES), " ".join(COLOURS), " ".join(SIZES), " ".join(BACKGROUNDS)]
    lines += [" ".join(s + "s" for s in SHAPES), " ".join(POSITIONS), "Instruct: Find the image that matches the query.",
              "Query: Image: Text:"]
    for _ in range(300):
        scene = sample_scene(rng)
        lines.append(caption(scene))
        for edit in edits_of(rng, scene, 3):
            lines += edit.texts + ([edit.loose_text] if edit.loose_text else [])
    return lines


__all__ = [
    "CIRCO_GALLERY_SPLIT", "CIRCO_QUERY_SPLIT", "CIRR_SPLIT", "WORLD_PARTS", "WorldConfig", "circo_rows",
    "circo_scenes", "cirr_rows", "cirr_scenes", "image_rows", "pair_rows", "triplet_rows", "triplet_scenes",
    "world_corpus", "write_world",
]
