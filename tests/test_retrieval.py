"""GalleryIndex: exact torch vs FAISS search, bounded memory, exclusions, save/load, validation, building."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from collm_hf.evaluation.index import GalleryIndex, exact, gallery, identity, shard_range

faiss = pytest.importorskip("faiss")


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def index():
    return GalleryIndex(_unit(3000, 48, 0), [f"img-{i}" for i in range(3000)])


def brute_force(index, queries, k, exclude=None):
    scores = queries @ index.embeddings.T  # (Q, N)
    for row, ids in enumerate(exclude or []):
        for image_id in ids:
            if image_id in index.position:
                scores[row, index.position[image_id]] = float("-inf")
    top = scores.topk(k, dim=1)
    return top.values, top.indices


@pytest.mark.parametrize("module", [gallery, identity])
def test_docstring_examples(module):
    import doctest

    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("k, chunk_size", [(1, 100), (10, 1000), (50, 333), (120, 4096)])
def test_torch_and_faiss_exact_search_agree(index, k, chunk_size):
    queries = _unit(70, 48, 1)
    rng = np.random.default_rng(k)
    exclude = [[f"img-{j}" for j in rng.integers(0, 3000, rng.integers(0, 4))] + ["not-in-gallery"] for _ in range(70)]
    by_torch = index.search(queries, k, exclude_ids=exclude, backend="torch", chunk_size=chunk_size)
    by_faiss = index.search(queries, k, exclude_ids=exclude, backend="faiss")
    assert by_torch.ids == by_faiss.ids
    assert torch.equal(by_torch.indices, by_faiss.indices)
    assert torch.allclose(by_torch.scores, by_faiss.scores, atol=1e-5)
    values, indices = brute_force(index, queries, k, exclude)
    assert torch.equal(by_torch.indices, indices) and torch.allclose(by_torch.scores, values, atol=1e-5)
    for row, banned in enumerate(exclude):
        assert not set(banned) & set(by_torch.ids[row])


def test_auto_backend_is_faiss_when_installed(index, monkeypatch):
    calls = []
    monkeypatch.setattr(gallery, "search_faiss",
                        lambda *a: calls.append(1) or (torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long)))
    index.search(_unit(1, 48, 2), 1)
    assert calls == [1]


def test_faiss_backend_without_faiss_is_a_clear_error(index, monkeypatch):
    monkeypatch.setattr(gallery, "faiss_available", lambda: False)
    with pytest.raises(ImportError, match="pip install faiss"):
        index.search(_unit(1, 48, 2), 1, backend="faiss")
    assert len(index.search(_unit(1, 48, 2), 3).ids[0]) == 3  # auto falls back to torch


def test_torch_memory_is_bounded_by_chunks(index, monkeypatch):
    """Score blocks never exceed (query block) x (chunk) while the gallery is larger than the chunk."""
    shapes = []
    original = exact._score_block

    def spy(queries, chunk):
        shapes.append((queries.shape[0], chunk.shape[0]))
        return original(queries, chunk)

    monkeypatch.setattr(exact, "_score_block", spy)
    queries = _unit(20, 48, 3)
    result = index.search(queries, 5, backend="torch", max_block_bytes=20 * 256 * 4)  # 256 gallery rows per block
    assert len(shapes) == -(-3000 // 256) and max(c for _, c in shapes) == 256
    assert torch.equal(result.indices, brute_force(index, queries, 5)[1])
    shapes.clear()
    index.search(queries, 5, backend="torch", chunk_size=1000)
    assert [c for _, c in shapes] == [1000, 1000, 1000]


def test_k_larger_than_what_is_left_pads_with_minus_one():
    small = GalleryIndex(torch.eye(3), ["a", "b", "c"])
    for backend in ("torch", "faiss"):
        result = small.search(torch.tensor([[1.0, 0.5, 0.0]]), k=10, exclude_ids=[["a"]], backend=backend)
        assert result.ids == [["b", "c"]]
        assert result.indices.tolist() == [[1, 2, -1]] and torch.isneginf(result.scores[0, 2])


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw"])
def test_approximate_search_finds_clustered_neighbours(kind):
    centers = _unit(40, 32, 5)
    gallery = F.normalize(centers.repeat_interleave(50, 0) + 0.05 * torch.randn(2000, 32), dim=-1)
    approx_index = GalleryIndex(gallery, [str(i) for i in range(2000)])
    queries = F.normalize(centers[:10] + 0.05 * torch.randn(10, 32), dim=-1)
    exact = approx_index.search(queries, 10, backend="torch").ids
    approx = approx_index.search(queries, 10, approximate=kind, nprobe=8, exclude_ids=[["0"]] * 10).ids
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.8 and all("0" not in row for row in approx)


def test_save_load_round_trip(index, tmp_path):
    index.save(str(tmp_path / "idx"))
    names = sorted(os.listdir(tmp_path / "idx"))
    assert len(names) == 3 and names[2] == "manifest.json"
    assert names[0].startswith("embeddings-00000-") and names[1].startswith("ids-00000-")
    loaded = GalleryIndex.load(str(tmp_path / "idx"))
    assert loaded.ids == index.ids and torch.equal(loaded.embeddings, index.embeddings)
    queries = _unit(5, 48, 7)
    assert loaded.search(queries, 7, backend="torch").ids == index.search(queries, 7, backend="torch").ids
    (tmp_path / "idx" / names[1]).write_text('["x"]')
    with pytest.raises(ValueError, match="does not match"):
        GalleryIndex.load(str(tmp_path / "idx"))
    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        GalleryIndex.load(str(tmp_path / "nothing"))


def test_failed_save_leaves_the_previous_index(index, tmp_path, monkeypatch):
    from collm_hf.evaluation.index import storage

    small = GalleryIndex(torch.eye(2), ["a", "b"])
    small.save(str(tmp_path))
    before = sorted(os.listdir(tmp_path))

    def boom(self, start, block):
        raise OSError("disk full")

    monkeypatch.setattr(storage.ShardWriter, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left, nothing replaced
    monkeypatch.undo()
    loaded = GalleryIndex.load(str(tmp_path))
    assert loaded.ids == ["a", "b"] and torch.equal(loaded.embeddings, torch.eye(2))


def test_invalid_embeddings_and_ids_are_rejected():
    bad = torch.eye(3)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite.*'b'"):
        GalleryIndex(bad, ["a", "b", "c"])
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        GalleryIndex(bad, ["a", "b", "c"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        GalleryIndex(torch.eye(2), ["a", "a"])
    with pytest.raises(ValueError, match="3 embeddings but 2 ids"):
        GalleryIndex(torch.eye(3), ["a", "b"])
    good = GalleryIndex(torch.eye(3), [1, 2, 3])
    assert good.ids == ["1", "2", "3"]
    with pytest.raises(ValueError, match="Query embeddings has NaN"):
        good.search(torch.tensor([[float("nan"), 0.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="query_embeds must be"):
        good.search(torch.ones(1, 4), 1)
    with pytest.raises(ValueError, match="backend"):
        good.search(torch.ones(1, 3), 1, backend="annoy")
    with pytest.raises(ValueError, match="k must be"):
        good.search(torch.ones(1, 3), 0)
    with pytest.raises(ValueError, match="exclude_ids has 2"):
        good.search(torch.ones(1, 3), 1, exclude_ids=[[], []])


def test_select_keeps_rows_and_order():
    idx = GalleryIndex(torch.eye(4), ["a", "b", "c", "d"])
    sub = idx.select(["d", "b"])
    assert sub.ids == ["d", "b"] and torch.equal(sub.embeddings, torch.eye(4)[[3, 1]])
    with pytest.raises(KeyError, match="not in the gallery"):
        idx.select(["z"])


# ---------------------------------------------------------------------------------------------------------------
# Building from a dataset
# ---------------------------------------------------------------------------------------------------------------
def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)) for i in range(n)]


def colour_embed(images):
    """A deterministic toy embedder: normalised mean colour plus a constant."""
    rows = [torch.tensor(np.asarray(im, dtype=np.float32).mean((0, 1)).tolist() + [50.0]) for im in images]
    return F.normalize(torch.stack(rows), dim=-1)  # (batch, 4)


def test_from_dataset_matches_model_and_is_batch_size_independent(tiny_model_and_processor):
    import datasets

    model, processor = tiny_model_and_processor
    images = _images(7)
    table = datasets.Dataset.from_dict({"image_id": [f"g{i}" for i in range(7)], "image": images})
    built = GalleryIndex.from_dataset(table, model, processor, batch_size=3, show_progress=False)
    with torch.no_grad():
        expected = model.get_image_embeds(processor(images=images)["pixel_values"])
    assert built.ids == [f"g{i}" for i in range(7)]
    assert torch.allclose(built.embeddings, expected, atol=1e-5)
    again = GalleryIndex.from_dataset({"image_id": built.ids, "image": images}, model, processor, batch_size=7,
                                      show_progress=False)
    assert torch.allclose(again.embeddings, built.embeddings, atol=1e-5)


def test_from_dataset_reads_paths_and_rejects_bad_galleries(tmp_path):
    images = _images(3)
    paths = []
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    built = GalleryIndex.from_dataset({"image_id": ["a", "b", "c"], "image": paths}, embed_fn=colour_embed,
                                      show_progress=False)
    assert torch.allclose(built.embeddings, colour_embed(images))
    with pytest.raises(ValueError, match="'b' is missing"):
        GalleryIndex.from_dataset({"image_id": ["a", "b"], "image": [images[0], None]}, embed_fn=colour_embed)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        GalleryIndex.from_dataset({"image_id": ["a", "a"], "image": images[:2]}, embed_fn=colour_embed)
    with pytest.raises(KeyError, match="no 'image_id' column"):
        GalleryIndex.from_dataset({"id": ["a"], "image": images[:1]}, embed_fn=colour_embed)
    with pytest.raises(ValueError, match="NaN or infinite.*'a'"):
        GalleryIndex.from_dataset({"image_id": ["a"], "image": images[:1]},
                                  embed_fn=lambda ims: torch.full((len(ims), 4), float("nan")), show_progress=False)


@pytest.mark.parametrize("n, shards", [(10, 3), (11, 4), (9, 3), (5, 2)])
def test_shard_range_matches_datasets_contiguous_shards(n, shards):
    import datasets

    table = datasets.Dataset.from_dict({"x": list(range(n))})
    for index in range(shards):
        start, end = shard_range(n, shards, index)
        assert table.shard(shards, index, contiguous=True)["x"] == list(range(start, end))


def test_from_dataset_with_single_process_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    images = _images(5)
    table = {"image_id": [str(i) for i in range(5)], "image": images}
    built = GalleryIndex.from_dataset(table, embed_fn=colour_embed, accelerator=Accelerator(cpu=True), batch_size=2)
    assert torch.allclose(built.embeddings, colour_embed(images))
    AcceleratorState._reset_state(reset_partial_state=True)


def test_from_dataset_with_decoding_workers():
    import datasets

    images = _images(9)
    table = datasets.Dataset.from_dict({"image_id": [f"w{i}" for i in range(9)], "image": images})
    built = GalleryIndex.from_dataset(table, embed_fn=colour_embed, batch_size=4, num_workers=2, show_progress=False)
    assert built.ids == [f"w{i}" for i in range(9)] and torch.allclose(built.embeddings, colour_embed(images))
    with pytest.raises(ValueError, match="'w1' is missing"):
        GalleryIndex.from_dataset({"image_id": ["w0", "w1"], "image": [images[0], None]}, embed_fn=colour_embed,
                                  num_workers=1, show_progress=False)


def test_from_streaming_dataset_in_bounded_batches():
    import datasets

    images = _images(7)
    table = datasets.Dataset.from_dict({"image_id": [f"s{i}" for i in range(7)], "image": images})
    sizes = []
    built = GalleryIndex.from_dataset(table.to_iterable_dataset(num_shards=2), batch_size=3, show_progress=False,
                                      embed_fn=lambda ims: sizes.append(len(ims)) or colour_embed(ims))
    assert built.ids == [f"s{i}" for i in range(7)] and max(sizes) <= 3
    assert torch.allclose(built.embeddings, colour_embed(images))


def _two_process_build(folder):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a parent that may hold a 1-process state
    accelerator = Accelerator(cpu=True)
    images = _images(7)  # 7 rows over 2 processes: shards of 4 and 3
    calls = []
    built = GalleryIndex.from_dataset({"image_id": [str(i) for i in range(7)], "image": images},
                                      embed_fn=lambda ims: calls.append(len(ims)) or colour_embed(ims),
                                      accelerator=accelerator, batch_size=2, show_progress=False)
    assert accelerator.num_processes == 2
    assert sum(calls) == (4 if accelerator.process_index == 0 else 3)
    import datasets

    stream = datasets.Dataset.from_dict({"image_id": [str(i) for i in range(7)], "image": images})
    streamed = GalleryIndex.from_dataset(stream.to_iterable_dataset(num_shards=2), embed_fn=colour_embed,
                                         accelerator=accelerator, batch_size=2, show_progress=False)
    torch.save({"ids": built.ids, "embeddings": built.embeddings, "stream_ids": streamed.ids,
                "stream_embeddings": streamed.embeddings}, os.path.join(folder, f"{accelerator.process_index}.pt"))


def test_from_dataset_splits_across_two_processes(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_two_process_build, args=(str(tmp_path),), num_processes=2)
    expected = colour_embed(_images(7))
    for rank in (0, 1):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["ids"] == [str(i) for i in range(7)]
        assert torch.allclose(result["embeddings"], expected)
        order = [int(i) for i in result["stream_ids"]]  # streaming: every image once, in process order
        assert sorted(order) == list(range(7)) and torch.allclose(result["stream_embeddings"], expected[order])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exclusions_apply_when_k_is_the_whole_gallery(backend):
    small = GalleryIndex(_unit(6, 8, 9), list("abcdef"))
    result = small.search(_unit(2, 8, 10), k=6, exclude_ids=[["a", "b"], []], backend=backend)
    assert len(result.ids[0]) == 4 and not {"a", "b"} & set(result.ids[0]) and len(result.ids[1]) == 6
    assert result.indices[0, 4:].tolist() == [-1, -1]


@pytest.mark.gpu
def test_torch_search_on_cuda_matches_cpu(index):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    queries = _unit(30, 48, 11)
    on_cpu = index.search(queries, 20, backend="torch")
    on_gpu = GalleryIndex(index.embeddings, index.ids).to("cuda").search(queries.cuda(), 20, backend="torch")
    assert on_gpu.ids == on_cpu.ids and torch.allclose(on_gpu.scores, on_cpu.scores, atol=1e-4)


def test_finiteness_check_is_blockwise_and_counts_every_block():
    from collm_hf.apps.benchmark.harness import peak_memory_above_baseline
    from collm_hf.evaluation.index.gallery import check_finite

    rows = torch.zeros(3000, 4)
    rows[5, 1], rows[1700, 0], rows[2999, 3] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"\(3 rows, first: id 'r5'\)"):
        check_finite(rows, "Gallery embeddings", [f"r{i}" for i in range(3000)], block_bytes=64)
    gallery, ids = _unit(150_000, 256, 12), [str(i) for i in range(150_000)]  # 154 MB
    # Resident memory is noisy (other threads, re-faulted library pages) and noise only adds: take the least of three.
    added = [peak_memory_above_baseline(lambda: GalleryIndex(gallery, ids)) for _ in range(3)]
    if None not in added:  # Linux: building the index adds no copy of the matrix (the check once added 1.7x)
        assert min(added) < 0.25 * gallery.numel() * 4, added
