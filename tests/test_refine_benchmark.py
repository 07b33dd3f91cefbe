"""Benchmark refinement: the decision rule, negative mining, trials, and an end-to-end run with the proxy judge."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image

from collm_hf.data.schema import gallery_features, queries_features
from collm_hf.data.writer import write_dataset
from _scripts import load_script
from collm_hf.pipelines.refinement import (
    JudgeRequest,
    LLMTextRewriter,
    mine_hard_negatives,
    passes_rule,
    run_trials,
)


def test_decision_rule_two_of_three():
    assert [passes_rule(n) for n in range(4)] == [False, False, True, True]
    assert passes_rule(3, trials=5, min_passes=3) and not passes_rule(2, trials=5, min_passes=3)
    with pytest.raises(ValueError, match="passes"):
        passes_rule(4)


def test_hard_negatives_are_the_most_similar_allowed_images():
    gallery = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.99, 0.1], [0.9, 0.4], [0.7, 0.7], [0.0, 1.0], [0.95, 0.3]]), dim=-1)
    target = gallery[[0]]
    # Row 0 is the target, row 1 the reference: never negatives. The 3 nearest of the rest: 5, 2, 3.
    assert mine_hard_negatives(target, gallery, [{0, 1}]) == [[5, 2, 3]]
    allowed = [np.array([True, True, True, False, True, False])]  # same-category rows only (Fashion-IQ)
    assert mine_hard_negatives(target, gallery, [{0, 1}], allowed) == [[2, 4]]


class ScriptedJudge:
    """Finds the target in the trials listed per query (by its text), else picks the first wrong candidate."""

    def __init__(self, right_trials):
        self.right_trials, self.seen = right_trials, {}

    def choose(self, requests):
        picks = []
        for request in requests:
            trial = self.seen.get(request.text, 0)
            self.seen[request.text] = trial + 1
            target_index = request.candidate_ids.index("t")
            wrong = next(i for i, c in enumerate(request.candidate_ids) if c != "t")
            picks.append(target_index if trial in self.right_trials.get(request.text, ()) else wrong)
        return picks


def test_trials_shuffle_and_count():
    queries = [{"query_id": str(q), "reference_image": None, "target_ids": ["t"]} for q in range(3)]
    judge = ScriptedJudge({"a": (0, 1, 2), "b": (0, 2), "c": (1,)})
    passes, picks = run_trials(judge, queries, [["n1", "n2", "n3"]] * 3, ["a", "b", "c"], seed=0)
    assert passes == [3, 2, 1] and picks[1][0] == "t" and picks[1][1] != "t"
    # Each trial shows its own order, and the orders depend only on (seed, query_id, trial).
    captured = []
    run_trials(type("J", (), {"choose": lambda self, r: captured.extend(r) or [0] * len(r)})(),
               queries[:1], [["n1", "n2", "n3"]], ["a"], seed=0, trials=8)
    assert len({tuple(r.candidate_ids) for r in captured}) > 1
    assert all(sorted(r.candidate_ids) == ["n1", "n2", "n3", "t"] for r in captured)


class RewriteGenerator:
    def generate(self, conversations, attempt=0):
        return ['{"text": "make it exactly like the target"}' if "fix me" in c[-1]["content"] else "no idea"
                for c in conversations]


def test_llm_rewriter_parses_or_gives_none():
    rewriter = LLMTextRewriter(RewriteGenerator())
    assert rewriter(["fix me please", "other"]) == ["make it exactly like the target", None]


# ------------------------------------------------------------------------------------------------------------
# End to end with the CoLLM proxy judge
# ------------------------------------------------------------------------------------------------------------
def _image(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.fixture
def tiny_benchmark(tmp_path):
    gallery = [{"image_id": f"g{i}", "image": _image(i)} for i in range(10)]
    queries = [{"query_id": str(q), "reference_id": f"g{q}", "reference_image": _image(q),
                "modification_text": f"change number {q}", "target_ids": [f"g{(q + 3) % 10}"]} for q in range(6)]
    queries.append({"query_id": "6", "reference_id": "g6", "reference_image": _image(6),
                    "modification_text": "unlabelled", "target_ids": []})
    write_dataset(tmp_path / "bench", {"queries": {"val": queries}, "gallery": {"val": gallery}},
                  {"queries": queries_features("generic"), "gallery": gallery_features("generic")})
    return tmp_path / "bench"


def _load(folder, config):
    return load_dataset(str(folder), config, split="val", download_mode="force_redownload")


def _load_script(name):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    return load_script(path)


def test_refine_end_to_end_with_proxy_judge(tmp_path, tiny_benchmark, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "collm")
    processor.save_pretrained(tmp_path / "collm")
    summary = _load_script("refine_benchmark").main([
        "--benchmark", str(tiny_benchmark), "--split", "val", "--judge", str(tmp_path / "collm"),
        "--output-dir", str(tmp_path / "refined")])
    out = str(tmp_path / "refined")
    decisions = {d["query_id"]: d for d in _load(out, "refinement")}
    queries = {q["query_id"]: q for q in _load(out, "queries")}
    assert len(_load(out, "gallery")) == 10 and len(queries) == 7
    assert decisions["6"]["decision"] == "unlabeled"
    # Oracle: the proxy judge is order-invariant, so a query passes 3/3 exactly when its target is the nearest
    # of the 4 candidates to the composed query, computed here directly with the model.
    gallery_images = {f"g{i}": _image(i) for i in range(10)}
    for query_id in map(str, range(6)):
        decision, query = decisions[query_id], queries[query_id]
        negatives = decision["negative_ids"]
        assert len(negatives) == 3 and query["target_ids"][0] not in negatives and query["reference_id"] not in negatives
        with torch.no_grad():
            q = model.get_query_embeds(**processor(images=[query["reference_image"]], text=[query["modification_text"]]))
            ids = query["target_ids"] + negatives
            g = model.get_image_embeds(processor(images=[gallery_images[i] for i in ids])["pixel_values"])
        expected = 3 if int((g @ q[0]).argmax()) == 0 else 0
        assert decision["passes"] == expected and decision["trials"] == 3 and len(decision["picks"]) == 3
        assert decision["decision"] == ("kept" if expected == 3 else "removed")
    refined = _load(out, "queries_refined")
    kept = sorted(d["query_id"] for d in decisions.values() if d["decision"] == "kept")
    assert sorted(refined["query_id"]) == kept and summary["kept"] == len(kept)
    for row in refined:
        assert row["is_refined"] is False and row["original_text"] == row["modification_text"]
    assert "Refinement" in (tmp_path / "refined" / "README.md").read_text()


def test_refine_rewrites_ambiguous_texts(tmp_path, tiny_benchmark):
    from collm_hf.pipelines.refine import refine_benchmark

    class Embedder:  # mining only needs embeddings: every gallery image distinct
        name = "onehot"

        def embed(self, images, total=None, progress=False):
            return torch.eye(10)

    def target_of(text):  # "change number q" -> its target g{q+3}; "make it like gX" -> gX
        return text.split()[-1] if text.startswith("make") else f"g{(int(text.split()[-1]) + 3) % 10}"

    class Judge:  # right for every rewritten text, wrong for every original one
        images = "unused"

        def choose(self, requests):
            picks = []
            for r in requests:
                target = r.candidate_ids.index(target_of(r.text))
                picks.append(target if r.text.startswith("make") else (target + 1) % len(r.candidate_ids))
            return picks

    def rewriter(texts):  # only queries 1 and 2 get a usable rewrite
        return [f"make it like {target_of(t)}" if t.endswith(("1", "2")) else None for t in texts]

    summary = refine_benchmark(tiny_benchmark, "val", Judge(), Embedder(), tmp_path / "refined", rewriter=rewriter)
    assert summary["decisions"] == {"rewritten": 2, "removed": 4, "unlabeled": 1} and summary["kept"] == 2
    refined = load_dataset(str(tmp_path / "refined"), "queries_refined", split="val", download_mode="force_redownload")
    assert sorted(refined["query_id"]) == ["1", "2"]
    for row in refined:
        assert row["is_refined"] and row["original_text"] == f"change number {row['query_id']}"
        assert row["modification_text"] == f"make it like {row['target_ids'][0]}"
    decisions = load_dataset(str(tmp_path / "refined"), "refinement", split="val", download_mode="force_redownload")
    decisions = {d["query_id"]: d for d in decisions}
    assert decisions["1"]["passes"] == 0 and decisions["1"]["rewrite_passes"] == 3
    assert decisions["0"]["rewritten_text"] is None and decisions["0"]["decision"] == "removed"


# ------------------------------------------------------------------------------------------------------------
# A real image-text-to-text judge: a tiny random LLaVA (CLIP tower + Llama), built in memory
# ------------------------------------------------------------------------------------------------------------
def tiny_llava():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from collm_hf.testing_utils import (
        TEXT_CONFIGS,
        VISION_CONFIGS,
        tiny_image_processor,
        tiny_tokenizer,
    )

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = {k: v for k, v in VISION_CONFIGS["clip"].items() if k != "model_type"}
    text = {k: v for k, v in TEXT_CONFIGS["llama"].items() if k != "model_type"}
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text, vocab_size=len(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    template = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
                "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    processor = LlavaProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               num_additional_image_tokens=1)  # CLIP's class token
    return model, processor


def test_image_text_to_text_judge_picks_the_letter_with_the_highest_logit():
    from collm_hf.pipelines.refinement import ImageTextToTextJudge

    model, processor = tiny_llava()
    images = {f"g{i}": _image(i) for i in range(4)}
    judge = ImageTextToTextJudge(model, processor, images)
    requests = [JudgeRequest(_image(9), "make it red", ["g0", "g1", "g2", "g3"]),
                JudgeRequest(_image(8), "add a cat", ["g3", "g1", "g0", "g2"])]
    picks = judge.choose(requests)
    for request, pick in zip(requests, picks):  # oracle: the same prompt scored directly
        prompt = processor.apply_chat_template(judge.messages(request), add_generation_prompt=True, tokenize=False)
        assert prompt.count("<image>") == 5 and "D:" in prompt and request.text in prompt
        inputs = processor(text=[prompt], images=[[request.reference_image] + [images[i] for i in request.candidate_ids]],
                           return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        letters = [processor.tokenizer.convert_tokens_to_ids(letter) for letter in "ABCD"]
        assert pick == int(logits[letters].argmax())


def test_refine_with_the_image_text_to_text_judge(tmp_path, tiny_benchmark):
    from collm_hf.pipelines.refine import refine_benchmark
    from collm_hf.pipelines.refinement import ImageTextToTextJudge

    class Embedder:
        name = "onehot"

        def embed(self, images, total=None, progress=False):
            return torch.eye(10)

    model, processor = tiny_llava()
    summary = refine_benchmark(tiny_benchmark, "val", ImageTextToTextJudge(model, processor), Embedder(),
                               tmp_path / "refined")
    assert sum(summary["decisions"].values()) == 7
    for decision in _load(tmp_path / "refined", "refinement"):
        if decision["decision"] != "unlabeled":
            target = f"g{(int(decision['query_id']) + 3) % 10}"
            assert decision["passes"] == sum(pick == target for pick in decision["picks"])
            assert decision["decision"] == ("kept" if decision["passes"] >= 2 else "removed")
