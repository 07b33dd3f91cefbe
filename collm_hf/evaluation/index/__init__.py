"""The gallery index: embed a gallery once, save it with what made it, and find the top-k images of each query.

    gallery images --model.get_image_embeds--> shards of (n, D) embeddings + ids --search(queries, k)--> ranked ids

    identity.py     what made an index (`GalleryIdentity`: vision weights, embedding rule, image processor,
                    dtype) and what it holds (ids digest); `IndexMismatchError`
    storage.py      the folder's files: memory-mapped safetensors shards, ids, manifest (written last), lock
    exact.py        exact top-k streamed over the shards (torch matmuls or `faiss.knn`), bounded memory
    approximate.py  FAISS IVF-Flat / IVF-PQ / HNSW: trained on a sample, saved with FAISS's writer, reopened
    gallery.py      `GalleryIndex`: save / load / append, exact and approximate search
    building.py     embedding a gallery dataset: in memory, or into a folder with one shard per process

Embeddings are expected L2-normalised, so inner product = cosine similarity.
"""

from .approximate import APPROXIMATE_KINDS
from .building import append_dataset, build_index, embed_dataset, image_embedder, shard_plan, shard_range
from .exact import faiss_available
from .gallery import BACKENDS, GalleryIndex, SearchResult, check_finite
from .identity import GalleryIdentity, IndexMismatchError, gallery_identity, ids_digest, weights_digest
from .storage import MANIFEST_FILE, IndexFolderError, write_index

__all__ = ["APPROXIMATE_KINDS", "BACKENDS", "GalleryIdentity", "GalleryIndex", "IndexFolderError",
           "IndexMismatchError", "MANIFEST_FILE", "SearchResult", "append_dataset", "build_index", "check_finite",
           "embed_dataset", "faiss_available", "gallery_identity", "ids_digest", "image_embedder", "shard_plan",
           "shard_range", "weights_digest", "write_index"]
