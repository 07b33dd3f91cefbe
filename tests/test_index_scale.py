"""Gallery indexes at scale, with identity.

- Identity: an index made by model A and used with model B raises, naming both; another gallery raises too; the
  weights digest is computed once per model and recomputed only when the weights change.
- Shards: a 2-process build (torchrun on CPU) gathers no embeddings and equals the 1-process build; appending adds a
  shard without re-embedding the rest; shards are memory-mapped; streaming exact search equals the in-memory one.
- FAISS: saved kinds reopen with the same results and no training.
- Faults: a sharded build SIGKILLed midway and run again ends byte-identical to an uninterrupted build; two
  processes writing one folder leave exactly one of their two indexes.

Run as a script (`python tests/test_index_scale.py build FOLDER ...`) it is the subprocess those tests start.
"""

import copy
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # a subprocess: import the index modules without the package `__init__` (transformers)
    import types

    sys.modules["collm_hf"] = types.ModuleType("collm_hf")
    sys.modules["collm_hf"].__path__ = [str(ROOT / "collm_hf")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from collm_hf.evaluation.index import GalleryIdentity, GalleryIndex, IndexMismatchError  # noqa: E402

IDENTITY_A = GalleryIdentity("a" * 64, "clip:pooler+projection", None, "float32", "model-a")
IDENTITY_B = GalleryIdentity("b" * 64, "clip:pooler+projection", None, "float32", "model-b")
_PROJECTION = np.random.default_rng(0).standard_normal((8 * 8 * 3, 16)).astype(np.float32)


def toy_images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(n)]


def toy_embed(images, shift: float = 0.0) -> torch.Tensor:
    """A deterministic embedder: a fixed random projection of the pixels. Returns (batch, 16)."""
    pixels = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255 for im in images])
    return F.normalize(torch.from_numpy(pixels @ _PROJECTION) + shift, dim=-1)


def toy_gallery(n: int, seed: int = 0, prefix: str = "g") -> dict:
    return {"image_id": [f"{prefix}{i}" for i in range(n)], "image": toy_images(n, seed)}


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def _build_script(argv: list[str]) -> int:
    """`build FOLDER N MODEL SLEEP ROWS_PER_SHARD [GO_FILE]`: one slow sharded build (the fault tests' subprocess),
    started once GO_FILE exists. Returns how many images it embedded."""
    import time

    folder, n, which, pause, rows_per_shard = argv[0], int(argv[1]), argv[2], float(argv[3]), int(argv[4])
    identity = IDENTITY_A if which == "a" else IDENTITY_B
    shift = 0.0 if which == "a" else 0.5
    embedded = []

    def embed(images):
        time.sleep(pause)
        embedded.append(len(images))
        return toy_embed(images, shift)

    print("START", flush=True)
    while len(argv) > 5 and not os.path.exists(argv[5]):
        time.sleep(0.01)
    GalleryIndex.build(folder, toy_gallery(n), embed_fn=embed, identity=identity, batch_size=4,
                       rows_per_shard=rows_per_shard, show_progress=False)
    return sum(embedded)


def _torchrun_script(argv: list[str]) -> None:
    """`torchrun FOLDER`: a 2-process build that must gather no embeddings."""
    import json

    from accelerate import Accelerator

    import pickle

    import torch.distributed as dist

    accelerator = Accelerator(cpu=True)
    gathered, sent = [], []  # what travels between processes: no tensor, only small metadata
    accelerator.gather = lambda tensor: gathered.append(tensor) or tensor
    real_gather_object, real_into_tensor = dist.all_gather_object, dist.all_gather_into_tensor
    dist.all_gather_object = lambda out, obj, *a, **k: sent.append(len(pickle.dumps(obj))) or real_gather_object(
        out, obj, *a, **k)
    dist.all_gather_into_tensor = lambda *a, **k: gathered.append(a) or real_into_tensor(*a, **k)
    calls = []
    index = GalleryIndex.build(argv[0], toy_gallery(11), embed_fn=lambda ims: calls.append(len(ims)) or toy_embed(ims),
                               identity=IDENTITY_A, accelerator=accelerator, batch_size=2, show_progress=False,
                               approximate=["ivf-flat"])
    result = {"rank": accelerator.process_index, "world": accelerator.num_processes, "embedded": sum(calls),
              "gathered": len(gathered), "sent_bytes": max(sent, default=0), "ids": index.ids, "shards": index.num_shards,
              "top": index.search(toy_embed(toy_images(3, seed=9)), k=4, backend="torch").ids,
              "approximate": index.search(toy_embed(toy_images(3, seed=9)), k=4, approximate="ivf-flat",
                                          nprobe=64).ids}
    Path(argv[0]).parent.joinpath(f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    {"build": _build_script, "torchrun": _torchrun_script}[sys.argv[1]](sys.argv[2:])
    sys.exit(0)

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

faiss = pytest.importorskip("faiss")


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ==============================================================================================================
# Identity
# ==============================================================================================================
def test_index_made_by_model_a_refuses_model_b(tiny_model_and_processor, tmp_path):
    from collm_hf.evaluation.embedding import IndexCacheMismatchError, load_or_embed_gallery
    from collm_hf.evaluation.index import gallery_identity
    from collm_hf.testing_utils import tiny_model_and_processor as make

    model_a, processor = tiny_model_and_processor
    model_a.save_pretrained(tmp_path / "model-a")
    from transformers import AutoModel

    model_a = AutoModel.from_pretrained(tmp_path / "model-a", dtype=torch.float32)  # named by its folder
    model_b, _ = make(seed=1)
    gallery = {"image_id": ["x", "y", "z"], "image": toy_images(3)}
    built = load_or_embed_gallery(model_a, processor, gallery, tmp_path / "index", show_progress=False)
    assert built.identity == gallery_identity(model_a, processor)
    with pytest.raises(IndexCacheMismatchError) as error:
        load_or_embed_gallery(model_b, processor, gallery, tmp_path / "index", show_progress=False)
    message = str(error.value)
    assert str(tmp_path / "model-a") in message and "vision weights differ" in message
    assert gallery_identity(model_b, processor).weights_sha256[:12] in message  # both sides named
    rebuilt = load_or_embed_gallery(model_b, processor, gallery, tmp_path / "index", rebuild=True, show_progress=False)
    assert rebuilt.identity == gallery_identity(model_b, processor)
    assert GalleryIndex.load(tmp_path / "index", identity=gallery_identity(model_b, processor)).ids == ["x", "y", "z"]
    with pytest.raises(IndexMismatchError, match=r"another gallery: 3 images .* not the 2 images"):
        GalleryIndex.load(tmp_path / "index", ids=["x", "y"])


def test_identity_covers_image_processor_and_dtype_and_survives_save_load(tiny_model_and_processor, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from collm_hf.evaluation.index import gallery_identity

    model, processor = tiny_model_and_processor
    before = gallery_identity(model, processor)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    reloaded = gallery_identity(AutoModel.from_pretrained(tmp_path / "m", dtype=torch.float32),
                                AutoProcessor.from_pretrained(tmp_path / "m"))
    assert reloaded.differences(before) == []
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert gallery_identity(model, processor).differences(before) == ["image processor"]
    assert gallery_identity(model.to(torch.bfloat16), processor).differences(before) == [
        "vision weights", "image processor", "dtype"]


def test_weights_digest_is_cached_until_the_weights_change(tiny_model_and_processor, monkeypatch):
    from collm_hf.evaluation.index import identity, weights_digest

    model, _ = tiny_model_and_processor
    first = weights_digest(model)
    hashed = []
    real = identity.hashlib.sha256
    monkeypatch.setattr(identity.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    assert weights_digest(model) == first and hashed == []  # cached: no hashing
    with torch.no_grad():
        model.vision_projection.weight.mul_(2.0)  # as an optimizer step does: the version counter moves
    changed = weights_digest(model)
    assert changed != first and hashed == [1]
    model.language_model.get_input_embeddings().weight.data.zero_()  # not a gallery weight: same digest
    assert weights_digest(model) == changed


def test_weights_digest_of_a_plain_vision_tower(tiny_model_and_processor):
    """A tower and its projection outside a CoLLM hash as the same weights inside it do; each part counts."""
    from collm_hf.evaluation.index import weights_digest

    model, _ = tiny_model_and_processor
    tower, projection = copy.deepcopy(model.vision_tower), copy.deepcopy(model.vision_projection)
    assert weights_digest(tower, projection=projection) == weights_digest(model)
    assert weights_digest(tower) != weights_digest(model)  # without the projection: other weights
    with torch.no_grad():
        projection.weight.add_(1e-3)
    assert weights_digest(tower, projection=projection) != weights_digest(model)
    with pytest.raises(ValueError, match="plain vision tower"):
        weights_digest(model, projection=projection)
    with pytest.raises(TypeError, match="neither a CoLLM nor a vision tower"):
        weights_digest("runs/a")


# ==============================================================================================================
# Shards: several processes, append, memory map, streaming search
# ==============================================================================================================
def test_two_process_build_gathers_nothing_and_equals_one_process(tmp_path):
    from _multiprocess import launch_with_retry

    launch_with_retry(Path(__file__), ["torchrun", tmp_path / "two"], nproc=2)
    single = GalleryIndex.build(tmp_path / "one", toy_gallery(11), embed_fn=toy_embed, identity=IDENTITY_A,
                                show_progress=False, approximate=["ivf-flat"])
    two = GalleryIndex.load(tmp_path / "two", identity=IDENTITY_A)
    assert two.num_shards == 2 and single.num_shards == 1
    assert two.ids == single.ids and torch.allclose(two.embeddings, single.embeddings, atol=1e-6)
    queries = toy_embed(toy_images(3, seed=9))
    expected = single.search(queries, k=4, backend="torch").ids
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world"] == 2 and result["gathered"] == 0  # no embeddings travelled between processes
        assert 0 < result["sent_bytes"] < 4096  # only the shards' counts, names and digests
        assert result["embedded"] == (6 if rank == 0 else 5)  # each process embedded its own rows only
        assert result["ids"] == single.ids and result["shards"] == 2
        assert result["top"] == expected and result["approximate"] == expected
    assert two.saved_approximate == ("ivf-flat",)


def test_append_adds_a_shard_without_re_embedding(tmp_path):
    folder = tmp_path / "index"
    first = toy_gallery(40)
    index = GalleryIndex.build(folder, first, embed_fn=toy_embed, identity=IDENTITY_A, show_progress=False,
                               approximate=["ivf-flat", "hnsw"], approximate_params={"ivf-flat": {"nlist": 4}})
    before = _files(folder)
    grown = {"image_id": first["image_id"] + [f"new{i}" for i in range(9)],
             "image": first["image"] + toy_images(9, seed=5)}
    calls = []
    appended = index.append_dataset(grown, embed_fn=lambda ims: calls.append(len(ims)) or toy_embed(ims),
                                    identity=IDENTITY_A, show_progress=False)
    assert appended == [f"new{i}" for i in range(9)] and sum(calls) == 9  # the 40 indexed images: not again
    after = _files(folder)
    shards = [name for name in before if name.startswith(("embeddings-", "ids-"))]
    assert all(after[name] == before[name] for name in shards)  # the first shard is untouched
    assert len([n for n in after if n.startswith("embeddings-")]) == 2
    reopened = GalleryIndex.load(folder, identity=IDENTITY_A, ids=grown["image_id"])
    fresh = GalleryIndex(toy_embed(grown["image"]), grown["image_id"])
    assert torch.allclose(reopened.embeddings, fresh.embeddings, atol=1e-6)
    queries = toy_embed(toy_images(5, seed=5))  # the new images themselves
    for kind in (None, "ivf-flat", "hnsw"):
        found = reopened.search(queries, k=3, approximate=kind, nprobe=4)
        assert [row[0] for row in found.ids] == [f"new{i}" for i in range(5)], kind
        assert reopened.approximate_index(kind).ntotal == 49 if kind else True
    assert index.append_dataset(grown, embed_fn=toy_embed, identity=IDENTITY_A) == []  # nothing new
    with pytest.raises(IndexMismatchError, match="model-a"):
        reopened.append(_unit(1, 16, 0), ["other"], IDENTITY_B)


def test_load_memory_maps_the_shards(tmp_path):
    index = GalleryIndex.build(tmp_path / "index", toy_gallery(30), embed_fn=toy_embed, identity=IDENTITY_A,
                               rows_per_shard=10, show_progress=False)
    assert index.num_shards == 3
    maps = Path("/proc/self/maps").read_text()
    for (_, shard), name in zip(index.blocks(), sorted(p.name for p in (tmp_path / "index").glob("embeddings-*"))):
        address = shard.data_ptr()
        mapped = [line for line in maps.splitlines() if line.endswith(name)]
        assert any(int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16) for line in mapped)
    in_memory = GalleryIndex.load(tmp_path / "index", mmap=False)
    assert torch.equal(in_memory.embeddings, index.embeddings)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_streaming_exact_search_equals_the_in_memory_search(tmp_path, backend):
    gallery = _unit(500, 16, 1)
    ids = [f"r{i}" for i in range(500)]
    whole = GalleryIndex(gallery, ids)
    for start in range(0, 500, 150):  # 4 shards: 150, 150, 150, 50
        part = GalleryIndex(gallery[start:start + 150], ids[start:start + 150])
        if start == 0:
            sharded = part
        else:
            sharded.append(part.embeddings, part.ids)
    sharded.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index")
    assert loaded.num_shards == 4
    queries = _unit(40, 16, 2)
    exclude = [[f"r{(7 * q) % 500}", f"r{(11 * q) % 500}"] for q in range(40)]
    expected = whole.search(queries, k=25, exclude_ids=exclude, backend="torch")
    found = loaded.search(queries, k=25, exclude_ids=exclude, backend=backend, chunk_size=64)
    assert found.ids == expected.ids and torch.allclose(found.scores, expected.scores, atol=1e-5)
    assert torch.equal(loaded.vectors([499, 0, 151]), gallery[[499, 0, 151]])


# ==============================================================================================================
# FAISS kinds: saved, reopened, not retrained
# ==============================================================================================================
@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw"])
def test_saved_faiss_index_reopens_with_the_same_results_and_no_training(tmp_path, kind, monkeypatch):
    from collm_hf.evaluation.index import approximate

    centres = _unit(20, 32, 3)
    gallery = F.normalize(centres.repeat_interleave(60, 0) + 0.1 * _unit(1200, 32, 4), dim=-1)
    index = GalleryIndex(gallery, [str(i) for i in range(1200)], IDENTITY_A)
    index.save(tmp_path / "index")
    index.build_approximate(kind)
    assert (tmp_path / "index" / f"faiss-{kind}.index").is_file()
    queries = F.normalize(centres[:8] + 0.1 * _unit(8, 32, 5), dim=-1)
    built = index.search(queries, k=10, approximate=kind)
    exact = index.search(queries, k=10, backend="torch")
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(built.ids, exact.ids)])
    assert recall >= 0.9, recall

    def no_training(*args, **kwargs):
        raise AssertionError("a saved index was trained again")

    monkeypatch.setattr(approximate, "build", no_training)
    monkeypatch.setattr(approximate, "new_index", no_training)
    reopened = GalleryIndex.load(tmp_path / "index", identity=IDENTITY_A)
    assert reopened.saved_approximate == (kind,)
    again = reopened.search(queries, k=10, approximate=kind)
    assert again.ids == built.ids and torch.allclose(again.scores, built.scores, atol=1e-5)
    if kind in ("ivf-flat", "hnsw"):  # IVF lists, HNSW vectors: memory-mapped (FAISS reads fast-scan PQ codes in)
        assert f"faiss-{kind}.index" in Path("/proc/self/maps").read_text()
    reopened.save(tmp_path / "copy")  # an opened index saved elsewhere takes its FAISS index along
    copy = GalleryIndex.load(tmp_path / "copy")
    assert copy.saved_approximate == (kind,) and copy.search(queries, k=10, approximate=kind).ids == built.ids


# ==============================================================================================================
# Faults
# ==============================================================================================================
def _subprocess(*argv) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, __file__, "build", *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkilled_sharded_build_reruns_to_the_uninterrupted_files(tmp_path):
    folder, reference = tmp_path / "index", tmp_path / "reference"
    GalleryIndex(_unit(5, 16, 0), [f"old{i}" for i in range(5)], IDENTITY_A).save(folder)
    old = _files(folder)
    process = _subprocess(folder, 24, "a", 0.15, 6)  # 4 shards of 6 rows, 2 slow batches each
    assert process.stdout.readline().strip() == "START", process.stderr.read()[-2000:]
    deadline = time.time() + 120
    while not list(folder.glob("embeddings-00001-*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert list(folder.glob("embeddings-00001-*")), "the build ended before it was killed"
    assert GalleryIndex.load(folder).ids == [f"old{i}" for i in range(5)]  # the previous index is intact
    assert {k: v for k, v in _files(folder).items() if k in old} == old

    assert _build_script([str(reference), "24", "a", "0", "6"]) == 24  # uninterrupted
    assert _build_script([str(folder), "24", "a", "0", "6"]) <= 24 - 12  # the rerun keeps the finished shards
    assert _files(folder) == _files(reference)  # byte-identical, leftovers of the killed run removed
    assert GalleryIndex.load(folder, identity=IDENTITY_A).ids == [f"g{i}" for i in range(24)]


def test_two_writers_never_leave_a_mixed_index(tmp_path):
    folder, go = tmp_path / "index", tmp_path / "go"
    writers = [_subprocess(folder, 16, which, 0.25, 4, go) for which in ("a", "b")]
    for writer in writers:  # both imported and waiting: their builds (about 1 s each) overlap
        assert writer.stdout.readline().strip() == "START", writer.stderr.read()[-2000:]
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=180) == 0, writer.stderr.read()[-2000:]
    for which in ("a", "b"):
        _build_script([str(tmp_path / which), "16", which, "0", "4"])
    final = _files(folder)
    assert final in (_files(tmp_path / "a"), _files(tmp_path / "b"))
