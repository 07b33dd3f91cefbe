"""The synthetic world: deterministic, well-formed edits, benchmarks in the project schema, written through the
datasets writer and loaded back with `load_dataset`."""

import random
from dataclasses import replace

import pytest

from collm_hf.data import synthetic_scenes as scenes
from collm_hf.data import synthetic_world as sw
from collm_hf.data.schema import PAIRS_FEATURES, benchmark_features, triplet_features

TINY = sw.WorldConfig.tiny(seed=3)


def test_same_seed_same_world_other_seed_other_world():
    first = list(sw.pair_rows(sw.WorldConfig.tiny(seed=1)))[:20]
    again = list(sw.pair_rows(sw.WorldConfig.tiny(seed=1)))[:20]
    other = list(sw.pair_rows(sw.WorldConfig.tiny(seed=2)))[:20]
    assert [r["caption"] for r in first] == [r["caption"] for r in again]
    assert [r["image"].tobytes() for r in first] == [r["image"].tobytes() for r in again]
    assert [r["image_id"] for r in first] != [r["image_id"] for r in other]
    assert sw.cirr_rows(TINY)[0][0]["modification_text"] == sw.cirr_rows(TINY)[0][0]["modification_text"]


def test_render_and_caption_describe_every_object():
    rng = random.Random(0)
    for _ in range(50):
        scene = scenes.sample_scene(rng)
        image = scenes.render(scene, 48)
        assert image.size == (48, 48) and image.mode == "RGB"
        text = scenes.caption(scene)
        assert text.endswith(f"on a {scene.background} background")
        for obj in scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape} at the {scenes.POSITIONS[obj.cell]}" in text
    # Objects are drawn where the scene says: the centre pixel of an object's cell has its colour.
    scene = scenes.Scene("black", (scenes.Obj(4, "square", "red", "large"),))
    assert scenes.render(scene, 48).getpixel((24, 24)) == scenes.COLOURS["red"]


def test_refer_is_unambiguous():
    a, b = scenes.Obj(0, "circle", "red", "small"), scenes.Obj(1, "circle", "blue", "small")
    scene = scenes.Scene("gray", (a, b))
    assert scenes.refer(scene, a) == "the red circle"
    same = scenes.Scene("gray", (a, scenes.Obj(5, "circle", "red", "small")))
    assert scenes.refer(same, a) == "the red circle at the top left"


@pytest.mark.parametrize("name", list(scenes.EDITS))
def test_every_edit_changes_the_scene_and_says_how(name):
    rng, made = random.Random(name), 0
    for _ in range(200):
        scene = scenes.sample_scene(rng, min_objects=2, duplicate_p=0.5)
        edit = scenes.EDITS[name](rng, scene)
        if edit is None:
            continue
        made += 1
        assert edit.category == name and edit.reference == scene and edit.target != scene
        assert len(edit.texts) >= 3 and all(isinstance(t, str) and t for t in edit.texts)
        if edit.family:
            assert edit.target in edit.family and scene not in edit.family
            assert len({s.key for s in edit.family}) == len(edit.family)
            assert edit.loose_text
        assert len({o.cell for o in edit.target.objects}) == len(edit.target.objects)  # one object per cell
    assert made > 20


def test_triplets_and_images_are_consistent():
    rows = list(sw.triplet_rows(TINY))
    images = {r["image_id"] for r in sw.image_rows(TINY)}
    assert len(rows) >= TINY.num_groups * (TINY.edits_per_group - 1)
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert row["reference_id"] in images and row["target_id"] in images
        assert row["reference_id"] != row["target_id"]
        assert len(row["modifications"]) >= 3
    assert {r["category"] for r in rows} >= {"colour", "add", "remove", "move"}


def test_training_groups_hold_same_category_twins():
    """`twin_edits`: most categories drawn in a group come twice (two targets); without it, rarely."""
    def twinned_share(config):
        groups: dict = {}
        for row in sw.triplet_rows(config):
            groups.setdefault(row["id"].rsplit("-", 1)[0], []).append(row)  # "syn-{seed}-{group}-{k}"
        twinned = total = 0
        for rows in groups.values():
            assert len({r["target_id"] for r in rows}) == len(rows)  # twins are other targets, never repeats
            categories = [r["category"] for r in rows]
            twinned += sum(categories.count(c) >= 2 for c in categories)
            total += len(categories)
        return twinned / total

    with_twins = twinned_share(sw.WorldConfig(seed=4, num_groups=200))
    without = twinned_share(sw.WorldConfig(seed=4, num_groups=200, twin_edits=False))
    assert with_twins > 0.7 and without < 0.5, (with_twins, without)


def test_rows_list_the_loose_texts_of_siblings_they_answer():
    """Every removal of one object answers "remove one of the objects": with `sibling_loose_texts`, each "remove" row
    of a group lists every loose removal text of the group (its own and its twins'); without it, only its own."""
    loose = {"remove one of the objects", "take away any one object"}

    def groups(config):
        found: dict = {}
        for row in sw.triplet_rows(config):
            if row["category"] == "remove":
                found.setdefault(row["reference_id"], []).append(set(row["modifications"]) & loose)
        return [texts for texts in found.values() if len(texts) >= 2]

    with_siblings = groups(sw.WorldConfig(seed=5, num_groups=150))
    assert with_siblings and all(texts == [set.union(*texts)] * len(texts) for texts in with_siblings)
    without = groups(sw.WorldConfig(seed=5, num_groups=150, sibling_loose_texts=False))
    assert all(len(t) == 1 for texts in without for t in texts)
    assert any(len(set.union(*texts)) == 2 for texts in without)  # twins that drew the other wording


def test_cirr_style_benchmark():
    queries, gallery = sw.cirr_rows(TINY)
    ids = [g["image_id"] for g in gallery]
    assert len(queries) == TINY.num_cirr_queries and len(ids) == len(set(ids))
    for q in queries:
        members = q["subset_ids"]
        assert len(members) == 6 == len(set(members))
        assert q["reference_id"] in members and q["target_ids"][0] in members
        assert set(members) <= set(ids)
    # Gallery: the six members per query plus a distractor matching the text alone.
    assert len(ids) > 6 * len(queries) * 0.9


def test_circo_style_benchmark_has_every_valid_target():
    queries, scene_gallery = sw.circo_scenes(TINY)
    for q in queries:
        family = {s.image_id for s in q["family"]}
        in_gallery = family & set(scene_gallery)
        assert {s.image_id for s in q["targets"]} == in_gallery and len(in_gallery) >= 2
        assert q["reference"].image_id in scene_gallery  # CIRCO keeps the reference in the ranking
    rows, gallery = sw.circo_rows(TINY)
    assert all(len(r["target_ids"]) == len(set(r["target_ids"])) >= 2 for r in rows)
    assert all(r["semantic_aspects"] and r["shared_concept"] for r in rows)


def test_write_world_loads_back_with_the_schema(tmp_path):
    from datasets import load_dataset

    config = sw.WorldConfig(seed=5, num_pairs=30, num_groups=6, num_cirr_queries=5, num_circo_queries=4)
    written = sw.write_world(tmp_path, config)
    pairs = load_dataset(str(written["pairs"]), "pairs", split="train")
    assert pairs.features == PAIRS_FEATURES and len(pairs) == 30
    triplets = load_dataset(str(written["mtcir"]), "triplets", split="train")
    images = load_dataset(str(written["mtcir"]), "images", split="train")
    assert triplets.features == triplet_features()["triplets"] and images.features == triplet_features()["images"]
    assert set(triplets["reference_id"]) | set(triplets["target_id"]) == set(images["image_id"])
    cirr = load_dataset(str(written["cirr"]), "queries", split=sw.CIRR_SPLIT)
    assert cirr.features == benchmark_features("cirr")["queries"] and len(cirr) == 5
    assert cirr[0]["reference_image"].size == (48, 48)
    circo_gallery = load_dataset(str(written["circo"]), "gallery", split=sw.CIRCO_GALLERY_SPLIT)
    circo = load_dataset(str(written["circo"]), "queries", split=sw.CIRCO_QUERY_SPLIT)
    assert circo.features == benchmark_features("circo")["queries"]
    assert {t for ts in circo["target_ids"] for t in ts} <= set(circo_gallery["image_id"])


def test_unknown_part_is_refused(tmp_path):
    for workers in (1, 2):
        with pytest.raises(ValueError, match="bogus"):
            sw.write_world(tmp_path, TINY, parts=("pairs", "bogus"), workers=workers)
    assert not (tmp_path / "pairs").exists()  # refused before anything is written


def test_parts_written_at_once_are_the_same_files(tmp_path):
    config = sw.WorldConfig(seed=5, num_pairs=30, num_groups=6, num_cirr_queries=5, num_circo_queries=4)
    one = sw.write_world(tmp_path / "one", config)
    two = sw.write_world(tmp_path / "two", config, workers=2)
    assert list(two) == list(one)
    for part, folder in one.items():
        files = sorted(f.relative_to(folder) for f in folder.rglob("*") if f.is_file())
        assert files == sorted(f.relative_to(two[part]) for f in two[part].rglob("*") if f.is_file())
        assert all((folder / f).read_bytes() == (two[part] / f).read_bytes() for f in files), part


def test_max_objects_bounds_sampled_scenes():
    config = sw.WorldConfig.tiny(seed=4)
    config.max_objects = 2
    assert all(r["caption"].count(" at the ") <= 2 for r in sw.pair_rows(config))
    for row, reference, target in sw.triplet_scenes(config):
        assert len(reference.objects) <= 2 and len(target.objects) <= 3  # an edit may add one object
    queries, _ = sw.cirr_scenes(config)
    assert {len(q["reference"].objects) for q in queries} == {2}  # benchmark references keep two objects
    default = sw.WorldConfig.tiny(seed=4)
    assert max(r["caption"].count(" at the ") for r in sw.pair_rows(default)) == 3


def test_training_edit_weights_change_the_training_mix_only():
    base, weighted = sw.WorldConfig(seed=2, num_groups=300), sw.WorldConfig(seed=2, num_groups=300,
                                                                             training_edit_weights={"remove": 8})
    def share(config):
        categories = [r["category"] for r in sw.triplet_rows(config)]
        return categories.count("remove") / len(categories)

    assert share(weighted) > 1.5 * share(base)
    small = dict(num_cirr_queries=20, num_circo_queries=10)
    assert [q["modification_text"] for q in sw.cirr_rows(replace(base, **small))[0]] == \
        [q["modification_text"] for q in sw.cirr_rows(replace(weighted, **small))[0]]
    with pytest.raises(ValueError, match=r"unknown edit categories \['recolour'\]"):
        sw.WorldConfig(training_edit_weights={"recolour": 2})
