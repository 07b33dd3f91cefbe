"""MTCIR pipeline: grouping and pairing rules, JSON parsing, resume after a kill, SmolLM2 end to end."""

import copy
import hashlib
import json
import math
import re

import pytest
import torch
from datasets import Dataset, Features, load_dataset
from PIL import Image

from collm_hf.data.schema import PAIRS_FEATURES
from collm_hf.pipelines.generation import (
    apply_privacy_filter,
    build_messages,
    describes_personal_attributes,
    parse_modifications,
)
from collm_hf.pipelines.grouping import group_images, pairs_from_groups, pairs_in_group
from collm_hf.pipelines.mtcir import MTCIROptions, generate_mtcir


# ------------------------------------------------------------------------------------------------------------
# Grouping and pairing on hand-made embeddings
# ------------------------------------------------------------------------------------------------------------
def _star(similarities, dim=32, base_axis=0, first_free=1):
    """Row 0 = unit axis `base_axis`; row k = cos to row 0 equal to similarities[k-1], on its own free axis."""
    rows = [torch.nn.functional.one_hot(torch.tensor(base_axis), dim).float()]
    for k, sim in enumerate(similarities):
        row = torch.zeros(dim)
        row[base_axis], row[first_free + k] = sim, math.sqrt(1 - sim ** 2)
        rows.append(row)
    return torch.stack(rows)


def test_group_members_in_window_sorted_by_similarity():
    # 0.99 (near duplicate) and 0.3 (unrelated) are outside the window; 6 candidates inside, the best 5 join.
    embeds = _star([0.99, 0.6, 0.9, 0.3, 0.7, 0.8, 0.55, 0.52])
    groups = group_images(embeds, group_size=6, low=0.5, high=0.95)
    assert groups[0] == [0, 3, 6, 5, 2, 7]  # 0.9, 0.8, 0.7, 0.6, 0.55
    used = [i for g in groups for i in g]
    assert len(used) == len(set(used))


def test_smaller_groups_are_dropped_and_the_seed_stays_available():
    # Seed 0 has one image in its window (row 5): no group, but row 0 stays in the pool. Seed 5 then finds
    # 0, 6, 7, 8, 9 (all at 0.6); rows 1-4 are unrelated; 0 and 6-9 are at 0.36 from each other.
    axis = lambda k: torch.nn.functional.one_hot(torch.tensor(k), 64).float()
    rows = [0.6 * axis(10) + 0.8 * axis(40)] + [axis(k) for k in (1, 2, 3, 4)] + [axis(10)]
    rows += [0.6 * axis(10) + 0.8 * axis(20 + k) for k in range(4)]
    embeds = torch.stack(rows)
    assert group_images(embeds, group_size=6) == [[5, 0, 6, 7, 8, 9]]
    assert group_images(embeds[:9], group_size=6) == []  # one member short: the group is dropped


def test_grouping_window_is_inclusive_and_configurable():
    embeds = _star([0.5, 0.95, 0.7])
    assert group_images(embeds, group_size=4, low=0.5, high=0.95) == [[0, 2, 3, 1]]
    assert group_images(embeds, group_size=4, low=0.51, high=0.95) == []
    with pytest.raises(ValueError, match="L2-normalised"):
        group_images(embeds * 2, group_size=4)
    with pytest.raises(ValueError, match="low"):
        group_images(embeds, low=0.9, high=0.5)


def test_groups_are_disjoint_and_greedy_in_input_order():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    embeds = torch.nn.functional.normalize(centres.repeat_interleave(7, 0) + 0.35 * torch.randn(28, 16), dim=-1)
    groups = group_images(embeds, group_size=6, low=0.5, high=0.99)
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)) and all(len(g) == 6 for g in groups)
    for group in groups:
        sims = embeds[group[1:]] @ embeds[group[0]]
        assert bool(((sims >= 0.5) & (sims <= 0.99)).all())
        assert torch.equal(sims, sims.sort(descending=True).values)
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)


def test_pairs_are_consecutive_and_first_to_every_member_deduplicated():
    assert pairs_in_group(list("abcdef")) == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f"),
                                            ("a", "c"), ("a", "d"), ("a", "e"), ("a", "f")]
    assert len(pairs_in_group(range(6))) == 9
    assert pairs_from_groups([[0, 1, 2], [3, 4, 5]]) == [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]


# ------------------------------------------------------------------------------------------------------------
# Parsing generator replies
# ------------------------------------------------------------------------------------------------------------
GOOD = ('{"modifications": [{"category": "attribute", "forward": "make the car red", "backward": "make the car blue"},'
        ' {"category": "Object added", "forward": "add a dog", "backward": "remove the dog"}]}')


def test_parse_good_reply_in_prose_and_code_fence():
    for reply in (GOOD, f"Sure! Here is the JSON:\n```json\n{GOOD}\n```\nHope it helps.", json.dumps(json.loads(GOOD), indent=2)):
        parsed = parse_modifications(reply)
        assert parsed.status == "ok", reply
        assert [m.category for m in parsed.modifications] == ["attribute", "object_added"]
        assert parsed.modifications[0].forward == "make the car red"


@pytest.mark.parametrize("reply,reason", [
    ("I cannot help with that.", "no_json"),
    ('{"modifications": "make it red"}', "no_modifications_list"),
    ('{"modifications": [{"category": "attr', "truncated"),
    ('{"modifications": [{"category": "mood", "forward": "make it sad", "backward": "make it happy"}]}',
     "unknown_category"),
    ('{"modifications": [{"category": "number", "forward": "add three cats"}]}', "missing_text"),
    ('{"modifications": [{"category": "number", "forward": "' + "very " * 25 + 'many", "backward": "one"}]}',
     "too_long"),
    ('{"modifications": [{"category": "number", "forward": "two cats", "backward": "Two cats"}]}', "same_text"),
    ('{"modifications": ["make it red"]}', "item_not_an_object"),
])
def test_parse_broken_replies_fail_with_a_reason(reply, reason):
    parsed = parse_modifications(reply)
    assert parsed.status == "failed" and parsed.modifications == []
    assert parsed.problems[-1] == reason


def test_parse_partial_replies_keep_the_valid_items():
    truncated = GOOD[: GOOD.index('"Object added"') + 20]  # cut inside the second item
    parsed = parse_modifications(truncated)
    assert parsed.status == "partial" and parsed.problems == ["truncated"]
    assert [m.forward for m in parsed.modifications] == ["make the car red"]
    mixed = ('{"modifications": [{"category": "viewpoint", "forward": "zoom in", "backward": "zoom out"},'
             ' {"category": "viewpoint", "forward": "zoom in", "backward": "zoom out"},'
             ' {"category": "colour", "forward": "x", "backward": "y"}]}')
    parsed = parse_modifications(mixed)
    assert parsed.status == "partial" and len(parsed.modifications) == 1 and parsed.problems == ["unknown_category"]
    bare = parse_modifications('[{"category": "number", "forward": "add a cat", "backward": "remove a cat"}]')
    assert bare.status == "ok"


def test_privacy_filter():
    assert describes_personal_attributes("make the woman older")
    assert describes_personal_attributes("turn the man into a woman")
    assert describes_personal_attributes("give him a beard")
    assert not describes_personal_attributes("add a man on the bench")
    assert not describes_personal_attributes("add two men next to the man")  # same gender, no swap
    assert not describes_personal_attributes("make the car red")
    parsed = parse_modifications('{"modifications": [{"category": "attribute", "forward": "make the girl blonde",'
                                 ' "backward": "make her hair dark"}, {"category": "object_added", "forward":'
                                 ' "add a bench", "backward": "remove the bench"}]}')
    filtered = apply_privacy_filter(parsed)
    assert [m.forward for m in filtered.modifications] == ["add a bench"] and filtered.problems == ["privacy"]


def test_prompt_names_both_captions_categories_and_json():
    user = build_messages("a red car", "a blue car")[-1]["content"]
    for needle in ("a red car", "a blue car", "attribute", "object_added", "object_removed", "relationship",
                   "viewpoint", "number", "JSON", "fewer than 20 words", "backward"):
        assert needle in user


# ------------------------------------------------------------------------------------------------------------
# A deterministic scripted generator (same interface as TransformersGenerator)
# ------------------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, nothing catches it."""


class ScriptedGenerator:
    """Replies computed from the two captions. Captions containing "broken" get a broken reply on attempt 0
    and a good one on retries; "hopeless" always broken; "person" mentions a woman's age (privacy)."""

    def __init__(self, kill_after_calls: int | None = None):
        self.calls, self.prompts, self.kill_after_calls = 0, 0, kill_after_calls

    def describe(self):
        return {"generator": "scripted"}

    def generate(self, conversations, attempt=0):
        if self.kill_after_calls is not None and self.calls >= self.kill_after_calls:
            raise Killed()
        self.calls += 1
        self.prompts += len(conversations)
        replies = []
        for conversation in conversations:
            a, b = re.findall(r"Image [AB]: (.*)", conversation[-1]["content"])
            if "hopeless" in a + b or ("broken" in a + b and attempt == 0):
                replies.append('{"modifications": [{"category": ')
                continue
            items = [{"category": "attribute", "forward": f"turn {a} into {b}", "backward": f"turn {b} into {a}"}]
            if len(a) % 2 == 0:
                items.append({"category": "object_added", "forward": f"add {b}", "backward": f"remove {b}"})
            if "person" in a + b:
                items.append({"category": "attribute", "forward": "make the woman older", "backward": "younger woman"})
            replies.append("Here you go: " + json.dumps({"modifications": items}))
        return replies


class FixedEmbedder:
    """Embeds image i (its pixel (0,0) red value) as a fixed vector: groups of 6 by construction."""

    name = "fixed"

    def __init__(self, embeds):
        self.embeds = embeds

    def embed(self, images, total=None, progress=False):
        return torch.stack([self.embeds[image.getpixel((0, 0))[0]] for image in images])


class CountingEmbedder(FixedEmbedder):
    calls = 0

    def embed(self, images, total=None, progress=False):
        self.calls += 1
        return super().embed(images, total, progress)


def _pairs_dataset(num_images, captions=None):
    rows = [{"image_id": f"img{i}", "image": Image.new("RGB", (8, 8), (i, 0, 0)),
             "caption": (captions or {}).get(i, f"a scene number {i}" + "!" * (i % 3))} for i in range(num_images)]
    return Dataset.from_list(rows, features=Features(PAIRS_FEATURES))


def _clustered(num_groups, per_group=6, dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_groups, dim, generator=generator), dim=-1)
    noise = 0.05 * torch.randn(num_groups * per_group, dim, generator=generator)
    return torch.nn.functional.normalize(centres.repeat_interleave(per_group, 0) + noise, dim=-1)


def _rows(folder, config):
    return load_dataset(str(folder), config, split="train", download_mode="force_redownload").to_list()


def test_build_counts_retries_drops_privacy_and_card(tmp_path):
    captions = {1: "a broken scene", 7: "a hopeless scene", 8: "a hopeless scene too", 9: "a hopeless one",
                10: "hopeless four", 11: "hopeless five", 6: "hopeless six", 2: "a person scene"}
    pairs = _pairs_dataset(12, captions)
    report = generate_mtcir(pairs, FixedEmbedder(_clustered(2)), ScriptedGenerator(), tmp_path / "out",
                         options=MTCIROptions(low=0.0, high=0.999, shard_size=4, max_retries=1))
    assert report.num_groups == 2 and report.num_pairs == 18
    assert report.num_pairs_kept == 9  # the second group is all hopeless
    assert report.dropped_pairs == {"truncated": 9} and report.retries >= 9 + 2
    assert report.rejections["privacy"] > 0
    triplets = _rows(tmp_path / "out", "triplets")
    assert len(triplets) == report.num_triplets
    assert {t["direction"] for t in triplets} == {"forward", "backward"}
    assert not any("woman" in text for t in triplets for text in t["modifications"])
    assert len({t["id"] for t in triplets}) == len(triplets)
    images = _rows(tmp_path / "out", "images")
    assert {i["image_id"] for i in images} == {t["reference_id"] for t in triplets} | {t["target_id"] for t in triplets}
    card = (tmp_path / "out" / "README.md").read_text()
    for needle in ("scripted", "Texts per category", "attribute", "privacy", "truncated", "Image A"):
        assert needle in card


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    pairs, embeds = _pairs_dataset(24, {3: "a broken one"}), _clustered(4)
    options = MTCIROptions(low=0.0, high=0.999, shard_size=5, max_retries=1)
    full = ScriptedGenerator()
    generate_mtcir(pairs, FixedEmbedder(embeds), full, tmp_path / "full", options=options)

    with pytest.raises(Killed):
        generate_mtcir(pairs, FixedEmbedder(embeds), ScriptedGenerator(kill_after_calls=4), tmp_path / "resumed",
                    options=options)
    assert not (tmp_path / "resumed").exists()  # nothing half-written at the destination
    assert len(list((tmp_path / "resumed.work").glob("run-*/shards/shard-*.json"))) >= 2
    second = ScriptedGenerator()
    generate_mtcir(pairs, FixedEmbedder(embeds), second, tmp_path / "resumed", options=options)
    assert second.prompts < full.prompts  # finished shards were not generated again
    for config in ("triplets", "images"):
        assert _rows(tmp_path / "resumed", config) == _rows(tmp_path / "full", config)
    # Other settings get their own run folder (nothing mixes in); the embeddings are computed once.
    runs_before = set((tmp_path / "resumed.work").glob("run-*"))
    counting = CountingEmbedder(embeds)
    generate_mtcir(pairs, counting, ScriptedGenerator(), tmp_path / "resumed", options=MTCIROptions(low=0.1, high=0.999))
    assert len(set((tmp_path / "resumed.work").glob("run-*")) - runs_before) == 1 and counting.calls == 0


def test_edited_pairs_get_a_fresh_plan(tmp_path):
    """Same output folder, same settings, edited pairs (rows reordered, a caption changed, two images swapped):
    the rerun plans afresh and writes what a first run on the edited pairs writes."""
    embeds, options = _clustered(3), MTCIROptions(low=0.0, high=0.999, shard_size=4, max_retries=0)
    original = _pairs_dataset(18)
    generate_mtcir(original, FixedEmbedder(embeds), ScriptedGenerator(), tmp_path / "out", options=options)
    rows = original.to_list()[::-1]
    rows[0]["caption"] = "an edited caption"
    rows[1]["image"], rows[10]["image"] = rows[10]["image"], rows[1]["image"]
    edited = Dataset.from_list(rows, features=Features(PAIRS_FEATURES))
    generate_mtcir(edited, FixedEmbedder(embeds), ScriptedGenerator(), tmp_path / "out", options=options)
    generate_mtcir(edited, FixedEmbedder(embeds), ScriptedGenerator(), tmp_path / "fresh", options=options)
    for config in ("triplets", "images"):
        assert _rows(tmp_path / "out", config) == _rows(tmp_path / "fresh", config)
    assert len(list((tmp_path / "out.work").glob("run-*"))) == 2
    settings = [json.loads(path.read_text()) for path in (tmp_path / "out.work").glob("run-*/settings.json")]
    assert len({entry["inputs"] for entry in settings}) == 2
    # The embedding caches are safetensors (nothing is unpickled), one per embedder and inputs.
    assert len(list((tmp_path / "out.work").glob("embeddings-*.safetensors"))) == 2
    assert not list((tmp_path / "out.work").rglob("*.pt"))


def test_image_embedder_identity_follows_the_weights(tiny_model_and_processor):
    from collm_hf.pipelines.embedding import ImageEmbedder

    model, processor = tiny_model_and_processor
    first = ImageEmbedder.from_model(model, processor)
    assert ImageEmbedder.from_model(model, processor, name="elsewhere").identity == first.identity
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.vision_tower.parameters()).add_(1e-3)
    assert ImageEmbedder.from_model(changed, processor).identity != first.identity
    custom = ImageEmbedder(lambda pixels: pixels.flatten(1), None, name="flat")
    assert custom.identity != ImageEmbedder(lambda pixels: pixels.flatten(1), None, name="other").identity


def test_image_embedder_identity_is_the_index_fingerprint(tiny_model_and_processor):
    """One fingerprint of a vision model: the embedder's identity is built from the gallery index's weights and
    image-processor digests, for a CoLLM and for its tower and projection on their own alike."""
    from collm_hf.evaluation.index import identity
    from collm_hf.models.collm.vision_families import gallery_embedding_rule
    from collm_hf.pipelines.embedding import ImageEmbedder

    model, processor = tiny_model_and_processor
    rule = gallery_embedding_rule(model.config)
    collm = ImageEmbedder.from_model(model, processor)
    tower = ImageEmbedder(model.get_image_embeds, processor.image_processor, name="tower", model=model.vision_tower,
                          projection=model.vision_projection, rule=rule)
    assert tower.identity == collm.identity
    gallery = identity.gallery_identity(model, processor)
    expected = {"weights": gallery.weights_sha256, "image_processor": gallery.image_processor_sha256, "rule": rule}
    assert collm.identity == hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
    before = collm.identity
    with torch.no_grad():  # an embedder follows its model's weights (the digest cached on the model is renewed)
        model.vision_projection.weight.mul_(2.0)
    assert collm.identity != before and collm.identity == tower.identity
    changed = collm.identity
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert collm.identity != changed


def test_no_group_in_the_window_names_the_similarities(tmp_path):
    with pytest.raises(ValueError, match="quantiles"):
        generate_mtcir(_pairs_dataset(12), FixedEmbedder(_clustered(2)), ScriptedGenerator(), tmp_path / "out",
                    options=MTCIROptions(low=0.0, high=0.1))


def test_bad_pairs_dataset_is_named(tmp_path):
    pairs = Dataset.from_list([{"image_id": "x", "image": Image.new("RGB", (8, 8)), "caption": "a"},
                               {"image_id": "x", "image": Image.new("RGB", (8, 8)), "caption": "b"}],
                              features=Features(PAIRS_FEATURES))
    with pytest.raises(ValueError, match="duplicated image_id.*x"):
        generate_mtcir(pairs, FixedEmbedder(_clustered(1)), ScriptedGenerator(), tmp_path / "out")


# ------------------------------------------------------------------------------------------------------------
# End to end through the CLI with the real SmolLM2-135M-Instruct weights
# ------------------------------------------------------------------------------------------------------------

def load_script(name):
    """Import `dataset_scripts/<name>.py` by path (the scripts folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.smollm2
def test_generate_mtcir_cli_with_real_smollm2(tmp_path, smollm2_path, tiny_model_and_processor, single_thread):
    from collm_hf.data.writer import write_dataset

    generate_script = load_script("generate_mtcir")

    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "collm")
    processor.save_pretrained(tmp_path / "collm")
    colours = ["red", "blue"]
    rows = [{"image_id": str(i), "image": Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)),
             "caption": f"a {colour} car parked on a street"} for i, colour in enumerate(colours)]
    write_dataset(tmp_path / "pairs", {"pairs": {"train": rows}}, {"pairs": PAIRS_FEATURES})
    report = generate_script.main(["--pairs", str(tmp_path / "pairs"), "--vision", str(tmp_path / "collm"),
                                   "--generator", smollm2_path, "--output-dir", str(tmp_path / "mtcir"),
                                   "--group-size", "2", "--low", "-1", "--high", "1", "--max-retries", "0",
                                   "--max-new-tokens", "40", "--batch-size", "1"])
    assert report["num_groups"] == 1 and report["num_pairs"] == 1
    assert sum(report["reply_status"].values()) == 1  # every pair got a real reply, parsed or rejected
    card = (tmp_path / "mtcir" / "README.md").read_text()
    assert "SmolLM2" in card and "Texts per category" in card
    if report["num_triplets"]:  # a 135M model's JSON is often unusable: the pipeline must be real, not good
        triplets = _rows(tmp_path / "mtcir", "triplets")
        assert all(t["modifications"] and t["direction"] in ("forward", "backward") for t in triplets)


# ------------------------------------------------------------------------------------------------------------
# A real SIGKILL in the middle of the generation stage
# ------------------------------------------------------------------------------------------------------------
KILL_CHILD = """
import sys, time, importlib.util, torch
from datasets import load_dataset
spec = importlib.util.spec_from_file_location("helpers", sys.argv[1]); helpers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helpers)
from collm_hf.pipelines.mtcir import MTCIROptions, generate_mtcir

class Slow(helpers.ScriptedGenerator):
    def generate(self, conversations, attempt=0):
        time.sleep(0.5)
        return super().generate(conversations, attempt)

pairs = load_dataset(sys.argv[2], "pairs", split="train", download_mode="force_redownload")
generate_mtcir(pairs, helpers.FixedEmbedder(torch.load(sys.argv[3])), Slow(), sys.argv[4],
            options=MTCIROptions(low=0.0, high=0.999, shard_size=3, max_retries=1))
"""


def test_sigkill_during_generation_then_resume_equals_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from collm_hf.data.writer import write_dataset

    embeds = _clustered(3)
    torch.save(embeds, tmp_path / "embeds.pt")
    write_dataset(tmp_path / "pairs", {"pairs": {"train": _pairs_dataset(18, {4: "a broken one"}).to_list()}},
                  {"pairs": PAIRS_FEATURES})
    pairs = load_dataset(str(tmp_path / "pairs"), "pairs", split="train", download_mode="force_redownload")
    options = MTCIROptions(low=0.0, high=0.999, shard_size=3, max_retries=1)
    generate_mtcir(pairs, FixedEmbedder(embeds), ScriptedGenerator(), tmp_path / "full", options=options)

    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, __file__, str(tmp_path / "pairs"),
                              str(tmp_path / "embeds.pt"), str(tmp_path / "killed")])
    deadline = time.time() + 120
    while len(list((tmp_path / "killed.work").glob("run-*/shards/shard-*.json"))) < 2:
        assert child.poll() is None and time.time() < deadline, "the child ended before it could be killed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = len(list((tmp_path / "killed.work").glob("run-*/shards/shard-*.json")))
    assert not (tmp_path / "killed").exists() and done < 9  # killed mid-way (9 shards in all)
    resumed = ScriptedGenerator()
    generate_mtcir(pairs, FixedEmbedder(embeds), resumed, tmp_path / "killed", options=options)
    assert 0 < resumed.calls
    for config in ("triplets", "images"):
        assert _rows(tmp_path / "killed", config) == _rows(tmp_path / "full", config)


def test_image_embedder_from_a_vision_checkpoint_equals_the_source_model(tmp_path, rgb_images):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from collm_hf.pipelines.embedding import ImageEmbedder
    from collm_hf.testing_utils import VISION_CONFIGS, tiny_image_processor

    torch.manual_seed(0)
    config = CLIPVisionConfig(**{k: v for k, v in VISION_CONFIGS["clip"].items() if k != "model_type"})
    source = CLIPVisionModelWithProjection(config).eval()
    source.save_pretrained(tmp_path / "clip")
    tiny_image_processor().save_pretrained(tmp_path / "clip")
    embedder = ImageEmbedder.from_pretrained(tmp_path / "clip", batch_size=3)
    embeds = embedder.embed(rgb_images)  # 4 images in batches of 3
    pixels = tiny_image_processor()(rgb_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(source(pixel_values=pixels).image_embeds, dim=-1)
    assert embeds.shape == (4, config.projection_dim)
    torch.testing.assert_close(embeds, expected, atol=1e-5, rtol=1e-5)


def test_workers_share_the_shards_and_the_last_one_writes(tmp_path):
    pairs, embeds = _pairs_dataset(18), _clustered(3)
    options = MTCIROptions(low=0.0, high=0.999, shard_size=4, max_retries=0)
    generate_mtcir(pairs, FixedEmbedder(embeds), ScriptedGenerator(), tmp_path / "single", options=options)
    first, second = ScriptedGenerator(), ScriptedGenerator()
    report = generate_mtcir(pairs, FixedEmbedder(embeds), first, tmp_path / "shared", options=options, worker=(0, 2))
    assert report.missing_shards == 3 and not (tmp_path / "shared").exists()  # 7 shards: 0, 2, 4, 6 done
    report = generate_mtcir(pairs, FixedEmbedder(embeds), second, tmp_path / "shared", options=options, worker=(1, 2))
    assert report.missing_shards == 0 and first.calls == 4 and second.calls == 3
    for config in ("triplets", "images"):
        assert _rows(tmp_path / "shared", config) == _rows(tmp_path / "single", config)
    with pytest.raises(ValueError, match="worker index"):
        generate_mtcir(pairs, FixedEmbedder(embeds), first, tmp_path / "bad", options=options, worker=(2, 2))
