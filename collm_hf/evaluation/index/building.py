"""Embedding a gallery dataset: in memory (`embed_dataset`), or into an index folder, one shard per process
(`build_index`), or as one more shard of a saved index (`append_dataset`).

    dataset rows --decode (workers)--> images --embed_fn / model.get_image_embeds--> (batch, D) --> shard rows

`build_index` gathers nothing: each process embeds a contiguous range of rows into its own shard file (written
block by block through a memory map), the processes exchange only their shards' counts and digests, and the
main process writes the manifest last. A shard already in the folder for the same model and ids (a build that
was killed, then run again) is kept, not embedded again, so the rerun ends with the files of an uninterrupted
build. One build writes a folder at a time (`storage.folder_lock`).
"""

import io
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...models.collm.image_io import open_image, to_rgb_image
from .._tables import column_names
from .gallery import GalleryIndex, check_finite, check_unique_ids
from .identity import GalleryIdentity, gallery_identity, ids_digest
from .storage import (IndexFolderError, ShardWriter, folder_lock, new_manifest, read_header, read_ids, remove_unlisted,
                      shard_entry, shard_files, shard_key, write_ids, write_manifest, write_shard)


def shard_range(n: int, num_shards: int, index: int) -> tuple[int, int]:
    """The [start, end) rows of contiguous shard `index` of `n` rows (as `datasets.Dataset.shard(contiguous=True)`)."""
    div, mod = divmod(n, num_shards)
    start = index * div + min(index, mod)
    return start, start + div + (1 if index < mod else 0)


def image_embedder(model, processor, device=None):
    """A function list of images -> (batch, D) CPU float tensor, through `model.get_image_embeds`."""
    device = device or next(model.parameters()).device

    @torch.inference_mode()
    def embed(images):
        pixel_values = processor(images=images)["pixel_values"].to(device)
        return model.get_image_embeds(pixel_values).float().cpu()  # (batch, D)

    return embed


def load_images(values, ids) -> list:
    """Decode a batch of gallery images (PIL, arrays, paths or `datasets` image dicts); errors name the id."""
    images = []
    for value, image_id in zip(values, ids):
        if value is None:
            raise ValueError(f"Gallery image {image_id!r} is missing (None); missing images must not be dropped silently.")
        if isinstance(value, (str, os.PathLike)):
            images.append(open_image(value, f"gallery image {image_id!r} ({value})"))
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            images.append(open_image(source, f"gallery image {image_id!r}"))
        else:
            images.append(to_rgb_image(value, f"gallery image {image_id!r}"))
    return images


class _ImageBatches(torch.utils.data.Dataset):
    """Batch `i` = the decoded images of rows [start + i * batch_size, ...) (a DataLoader item, for workers)."""

    def __init__(self, dataset, image_column, ids, start, end, batch_size):
        self.dataset, self.image_column, self.ids = dataset, image_column, ids
        self.start, self.end, self.batch_size = start, end, batch_size

    def __len__(self):
        return -(-(self.end - self.start) // self.batch_size)

    def __getitem__(self, i):
        b0 = self.start + i * self.batch_size
        b1 = min(self.end, b0 + self.batch_size)
        values = (self.dataset[self.image_column][b0:b1] if isinstance(self.dataset, dict)
                  else self.dataset[b0:b1][self.image_column])
        return b0, b1, load_images(values, self.ids[b0:b1])


def _embed_rows(dataset, image_column, ids, start, end, embed_fn, batch_size, show_progress, num_workers, sink):
    """Embed rows [start, end) in batches; `sink(dim)` is called once with the embedding size and returns a
    function (row offset within the range, (batch, D) block) that stores each batch."""
    reader = _ImageBatches(dataset, image_column, ids, start, end, batch_size)
    batches = (reader[i] for i in range(len(reader)))
    if num_workers > 0:  # decode in worker processes, a few batches ahead; the model runs here
        batches = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=num_workers, prefetch_factor=2)
    store = None
    with tqdm(total=end - start, desc="Embedding gallery", unit="img", disable=not show_progress) as bar:
        for b0, b1, images in batches:
            embeds = embed_fn(images).detach().float().cpu()  # (batch, D)
            check_finite(embeds, "Gallery embeddings", ids[b0:b1])
            if store is None:
                store = sink(embeds.shape[1])
            store(b0 - start, embeds)
            bar.update(b1 - b0)


def _prepare(dataset, model, processor, embed_fn, identity, id_column, image_column, accelerator):
    if embed_fn is None:
        if model is None or processor is None:
            raise ValueError("Embedding a gallery needs model and processor, or embed_fn.")
        embed_fn = image_embedder(model, processor, device=accelerator.device if accelerator else None)
        identity = gallery_identity(model, processor) if identity is None else identity
    streaming = not isinstance(dataset, dict) and not hasattr(dataset, "__len__")
    if not streaming:
        for name in (id_column, image_column):
            if name not in column_names(dataset):
                raise KeyError(f"The gallery has no {name!r} column (columns: {column_names(dataset)}).")
    return embed_fn, identity, streaming


def _in_memory_sink(rows, holder):
    def sink(dim):
        holder.append(torch.empty(rows, dim))
        return lambda offset, block: holder[0].__setitem__(slice(offset, offset + len(block)), block)

    return sink


def embed_dataset(dataset, model=None, processor=None, embed_fn=None, batch_size: int = 64, id_column: str = "image_id",
                  image_column: str = "image", accelerator=None, show_progress: bool = True, num_workers: int = 0,
                  identity: GalleryIdentity | None = None) -> GalleryIndex:
    """Embed a gallery in batches into an in-memory `GalleryIndex`.

    Args:
        dataset: a `datasets.Dataset` (images decoded one batch at a time), a streaming
            `datasets.IterableDataset`, or a dict of lists, with `id_column` and `image_column` (PIL images,
            numpy arrays or file paths).
        model, processor: a `CoLLMModel` and its `CoLLMProcessor` (gallery side: `get_image_embeds`; the index
            records their `gallery_identity`); or
        embed_fn: any function list of PIL images -> (batch, D) tensor (with `identity`, if it should be recorded).
        batch_size: images per forward pass.
        accelerator: an `accelerate.Accelerator`: each process embeds a contiguous share, then every process
            receives the whole matrix. For large galleries use `build_index`, which gathers nothing.
        show_progress: tqdm bar on the main process.
        num_workers: DataLoader worker processes that decode images ahead of the model (0: in this process).

    Returns:
        a `GalleryIndex` in dataset order (streaming with several processes: in process order).
    """
    embed_fn, identity, streaming = _prepare(dataset, model, processor, embed_fn, identity, id_column, image_column,
                                             accelerator)
    main = accelerator is None or accelerator.is_main_process
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    if streaming:
        ids, local = _embed_stream(dataset, embed_fn, batch_size, id_column, image_column, world, rank,
                                   show_progress and main)
        if world > 1:
            from accelerate.utils import gather_object

            counts = gather_object([len(ids)])
            ids = gather_object(ids)
            local = _gather_padded(local, counts, accelerator)
        return GalleryIndex(local, ids, identity)
    ids = check_unique_ids(dataset[id_column])
    start, end = shard_range(len(ids), world, rank)
    holder = []
    _embed_rows(dataset, image_column, ids, start, end, embed_fn, batch_size, show_progress and main, num_workers,
                _in_memory_sink(end - start, holder))
    local = holder[0] if holder else torch.empty(0, 0)
    if world > 1:
        counts = [b - a for a, b in (shard_range(len(ids), world, r) for r in range(world))]
        local = _gather_padded(local, counts, accelerator)
    return GalleryIndex(local, ids, identity)


def _embed_stream(dataset, embed_fn, batch_size, id_column, image_column, world, rank, show_progress):
    if world > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
    ids, parts = [], []
    with tqdm(desc="Embedding gallery", unit="img", disable=not show_progress) as bar:
        for batch in dataset.iter(batch_size=batch_size):
            batch_ids = [str(i) for i in batch[id_column]]
            embeds = embed_fn(load_images(batch[image_column], batch_ids)).detach().float().cpu()  # (batch, D)
            check_finite(embeds, "Gallery embeddings", batch_ids)
            ids += batch_ids
            parts.append(embeds)
            bar.update(len(batch_ids))
    return ids, (torch.cat(parts) if parts else torch.empty(0, 0))


def _gather_padded(local: torch.Tensor, counts: list[int], accelerator) -> torch.Tensor:
    """All-gather per-process row blocks of unequal length (`counts[rank]` rows each), in process order."""
    world, longest = accelerator.num_processes, max(counts)
    dim = torch.tensor([local.shape[1] if local.numel() else 0], device=accelerator.device)
    dim = int(accelerator.gather(dim).max())
    padded = torch.zeros(longest, dim, device=accelerator.device)
    if local.numel():
        padded[: local.shape[0]] = local.to(accelerator.device)
    gathered = accelerator.gather(padded).cpu().view(world, longest, dim)  # (world, longest, D)
    return torch.cat([gathered[rank, : counts[rank]] for rank in range(world)])  # (N, D)


# ----------------------------------------------------------------------------------------------------------
# Index folders
# ----------------------------------------------------------------------------------------------------------
def shard_plan(n: int, world: int, rows_per_shard: int | None = None) -> list[tuple[int, int, int]]:
    """[(process, start, end), ...]: each process's contiguous range, cut into pieces of at most
    `rows_per_shard` rows (None: one piece per process), in gallery order."""
    plan = []
    for rank in range(world):
        start, end = shard_range(n, world, rank)
        pieces = 1 if not rows_per_shard else max(1, -(-(end - start) // rows_per_shard))
        for piece in range(pieces):
            a, b = shard_range(end - start, pieces, piece)
            plan.append((rank, start + a, start + b))
    return plan


def _existing_shard(folder: Path, position: int, ids: list[str], identity: GalleryIdentity | None) -> dict | None:
    """The manifest entry of a complete shard already in `folder` for these ids and model, else None."""
    if identity is None:  # nothing says the embeddings there came from the same function
        return None
    digest = ids_digest(ids)
    embeddings_name, ids_name = shard_files(position, shard_key(identity.to_dict(), digest))
    if not ((folder / embeddings_name).is_file() and (folder / ids_name).is_file()):
        return None
    try:
        header, _ = read_header(folder / embeddings_name)
        metadata = header.get("__metadata__", {})
        if metadata.get("ids_sha256") != digest or ids_digest(read_ids(folder / ids_name)) != digest:
            return None
    except IndexFolderError:
        return None
    return shard_entry(folder, embeddings_name, ids_name, ids, digest)


def _process_info(accelerator):
    if accelerator is None:
        return 1, 0, (lambda: None), (lambda items: items)
    from accelerate.utils import gather_object

    return accelerator.num_processes, accelerator.process_index, accelerator.wait_for_everyone, gather_object


def build_index(folder, dataset, model=None, processor=None, embed_fn=None, batch_size: int = 64,
                id_column: str = "image_id", image_column: str = "image", accelerator=None, show_progress: bool = True,
                num_workers: int = 0, identity: GalleryIdentity | None = None, rows_per_shard: int | None = None,
                approximate=(), approximate_params: dict | None = None) -> GalleryIndex:
    """Embed a gallery into an index folder: one shard per process (or per `rows_per_shard` rows), manifest last.

    Args:
        folder: the index folder (created; an index already there is replaced once the new one is complete).
        dataset, model, processor, embed_fn, batch_size, id_column, image_column, show_progress, num_workers,
            identity: as `embed_dataset`.
        accelerator: an `accelerate.Accelerator`; each process writes its own shards, nothing is gathered.
        rows_per_shard: cut each process's rows into shards of at most this many (bounds file sizes, and what a
            killed build has to redo).
        approximate: FAISS kinds to build and save too ("ivf-flat", "ivf-pq", "hnsw"), on the main process.
        approximate_params: {kind: {parameter: value}} overrides (`approximate.default_params`).

    Returns:
        the saved index, opened memory-mapped on every process.

    Example:
        >>> index = build_index("gallery-index", gallery, model, processor, approximate=["ivf-pq"])  # doctest: +SKIP
    """
    embed_fn, identity, streaming = _prepare(dataset, model, processor, embed_fn, identity, id_column, image_column,
                                             accelerator)
    folder = Path(folder)
    world, rank, barrier, gather = _process_info(accelerator)
    main = rank == 0
    lock = folder_lock(folder) if main else None
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # the other processes wait at the barrier: one build writes the folder at a time
    try:
        barrier()
        if streaming:
            entries = _build_stream_shard(folder, dataset, embed_fn, identity, batch_size, id_column, image_column,
                                          world, rank, show_progress and main)
        else:
            entries = _build_shards(folder, dataset, embed_fn, identity, batch_size, image_column,
                                    check_unique_ids(dataset[id_column]), world, rank, rows_per_shard,
                                    show_progress and main, num_workers)
        entries = sorted(gather(entries), key=lambda entry: entry["position"])
        if main:
            shards = [{k: v for k, v in entry.items() if k != "position"} for entry in entries]
            all_ids = [i for entry in shards for i in read_ids(folder / entry["ids"])]
            check_unique_ids(all_ids)
            dims = {entry["dim"] for entry in entries if entry["dim"]}
            for entry in shards:
                entry.pop("dim")
            manifest = new_manifest(identity, all_ids, dims.pop() if dims else 0, shards)
            write_manifest(folder, manifest)
            remove_unlisted(folder, manifest)
    finally:
        if main:
            lock.release()
    barrier()
    index = GalleryIndex.load(folder)
    if main and approximate:
        for kind in approximate:
            index.build_approximate(kind, **(approximate_params or {}).get(kind, {}))
    barrier()
    return GalleryIndex.load(folder) if not main and approximate else index


def _build_shards(folder, dataset, embed_fn, identity, batch_size, image_column, ids, world, rank, rows_per_shard,
                  show_progress, num_workers) -> list[dict]:
    if not ids:
        raise ValueError("The gallery is empty.")
    entries = []
    for position, (owner, start, end) in enumerate(shard_plan(len(ids), world, rows_per_shard)):
        if owner != rank or start == end:
            continue
        entry = _existing_shard(folder, position, ids[start:end], identity)
        if entry is None:
            entry = _write_rows(folder, position, dataset, image_column, ids, start, end, embed_fn, batch_size,
                                identity, show_progress, num_workers)
        else:
            entry["dim"] = read_header(folder / entry["embeddings"])[0]["embeddings"]["shape"][1]
        entries.append(dict(entry, position=position))
    return entries


def _write_rows(folder, position, dataset, image_column, ids, start, end, embed_fn, batch_size, identity,
                show_progress, num_workers) -> dict:
    shard_ids = ids[start:end]
    digest = ids_digest(shard_ids)
    embeddings_name, ids_name = shard_files(position, shard_key(None if identity is None else identity.to_dict(), digest))
    metadata = {"format": "collm-gallery-index-shard", "num_images": len(shard_ids), "ids_sha256": digest}
    writer = []

    def sink(dim):
        writer.append(ShardWriter(folder / embeddings_name, len(shard_ids), dim, metadata))
        return writer[0].write

    try:
        _embed_rows(dataset, image_column, ids, start, end, embed_fn, batch_size, show_progress, num_workers, sink)
    except BaseException:
        if writer:
            writer[0].abort()
        raise
    writer[0].close()
    write_ids(folder / ids_name, shard_ids)
    return dict(shard_entry(folder, embeddings_name, ids_name, shard_ids, digest), dim=writer[0].dim)


def _build_stream_shard(folder, dataset, embed_fn, identity, batch_size, id_column, image_column, world, rank,
                        show_progress) -> list[dict]:
    """A streaming gallery: this process's share, spooled to a raw file as it comes, then written as one shard."""
    if world > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
    spool = folder / f".embeddings-spool-{rank:05d}.tmp"
    ids, dim = [], 0
    try:
        with open(spool, "wb") as handle, tqdm(desc="Embedding gallery", unit="img", disable=not show_progress) as bar:
            for batch in dataset.iter(batch_size=batch_size):
                batch_ids = [str(i) for i in batch[id_column]]
                embeds = embed_fn(load_images(batch[image_column], batch_ids)).detach().float().cpu()  # (batch, D)
                check_finite(embeds, "Gallery embeddings", batch_ids)
                handle.write(embeds.numpy().astype("<f4").tobytes())
                ids += batch_ids
                dim = embeds.shape[1]
                bar.update(len(batch_ids))
        if not ids:
            return []
        rows = torch.from_numpy(np.memmap(spool, dtype="<f4", mode="c", shape=(len(ids), dim)))  # (n, D), on disk
        entry = write_shard(folder, rank, rows, ids, identity)
    finally:
        if spool.exists():
            spool.unlink()
    return [dict(entry, position=rank, dim=dim)]


def append_dataset(index: GalleryIndex, dataset, model=None, processor=None, embed_fn=None, batch_size: int = 64,
                   id_column: str = "image_id", image_column: str = "image", show_progress: bool = True,
                   num_workers: int = 0, identity: GalleryIdentity | None = None) -> list[str]:
    """Embed the rows of `dataset` whose ids `index` lacks and append them as one shard (`GalleryIndex.append`);
    the images already indexed are not embedded again. Returns the appended ids (empty: nothing new)."""
    embed_fn, identity, streaming = _prepare(dataset, model, processor, embed_fn, identity, id_column, image_column, None)
    if streaming:
        raise ValueError("Appending needs a map-style dataset (not streaming).")
    index.check(identity)
    ids = check_unique_ids(dataset[id_column])
    new_rows = [row for row, image_id in enumerate(ids) if image_id not in index.position]
    if not new_rows:
        return []
    subset = (dataset.select(new_rows) if hasattr(dataset, "select")
              else {name: [values[row] for row in new_rows] for name, values in dataset.items()})
    new_ids = [ids[row] for row in new_rows]
    holder = []
    _embed_rows(subset, image_column, new_ids, 0, len(new_ids), embed_fn, batch_size, show_progress, num_workers,
                _in_memory_sink(len(new_ids), holder))
    index.append(holder[0], new_ids, identity)
    return new_ids


__all__ = ["append_dataset", "build_index", "embed_dataset", "image_embedder", "load_images", "shard_plan", "shard_range"]
