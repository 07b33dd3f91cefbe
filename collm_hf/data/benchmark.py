"""Peak memory of a dataset build, for the performance benchmark: it must stay flat as the dataset grows.

`benchmark_builder_memory(n_images, workdir)` writes a generated MTCIR-shaped source (`mtcir.jsonl` plus
`n_images` random JPEGs in LLaVA-Pretrain's `<subfolder>/<file>.jpg` layout), builds it in a fresh Python
subprocess (so the figure is that build's own peak RSS, not the caller's) and returns the peak in bytes.

Example:
    >>> peak = benchmark_builder_memory(2000, "/tmp/mem")   # doctest: +SKIP
    >>> peak / 2**20                                        # doctest: +SKIP
    310.2
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

# The probe loads `collm_hf.data` without running `collm_hf/__init__` (which imports torch and transformers
# for the model), so the figure is the builder's own: datasets + pyarrow + the rows in flight.
_PROBE = textwrap.dedent("""
    import json, resource, sys, types
    package = types.ModuleType("collm_hf")
    package.__path__ = [sys.argv[5]]
    sys.modules["collm_hf"] = package
    from collm_hf.data import BuildOptions
    from collm_hf.data.mtcir import build_mtcir
    source, images, output = sys.argv[1:4]
    build_mtcir(source, BuildOptions(output_dir=output, images_dir=images, check_workers=int(sys.argv[4])))
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the forking parent's size.
    try:
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        peak = int(status.split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_bytes": peak}))
""")


def make_mtcir_source(workdir: str | os.PathLike, n_images: int, image_size: int = 128, seed: int = 0) -> tuple[Path, Path]:
    """Write (once; reused if present) `<workdir>/mtcir-<n>/mtcir.jsonl` and its images; return (jsonl, images dir).

    Each image i is paired with image i+1 (two modification texts each), so there are `n_images` triplets.
    """
    root = Path(workdir) / f"mtcir-{n_images}-{image_size}"
    jsonl, images = root / "mtcir.jsonl", root / "images"
    if jsonl.is_file():
        return jsonl, images
    rng = np.random.default_rng(seed)
    relative = [f"{i // 1000:05d}/{i:09d}.jpg" for i in range(n_images)]
    for rel in relative:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / rel, quality=90)
    temp = jsonl.with_suffix(".partial")
    with open(temp, "w", encoding="utf-8") as handle:
        for i, rel in enumerate(relative):
            target = relative[(i + 1) % n_images]
            handle.write(json.dumps({"id": str(i), "image": rel, "target_image": target,
                                     "modifications": [f"change {i}", f"edit {i}"]}) + "\n")
    os.replace(temp, jsonl)
    return jsonl, images


def benchmark_builder_memory(n_images: int, workdir: str | os.PathLike, image_size: int = 128,
                             check_workers: int = 2) -> int:
    """Build a generated MTCIR dataset of `n_images` images in a subprocess; return its peak RSS in bytes.

    Args:
        n_images: images (and triplets) in the generated source.
        workdir: where the source (reused between calls) and the output (replaced) live.
        image_size: side of the random RGB JPEGs (128 px: ~12-50 KB each).
        check_workers: image-validation threads in the build.
    """
    jsonl, images = make_mtcir_source(workdir, n_images, image_size)
    output = Path(workdir) / f"built-{n_images}-{image_size}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(jsonl), str(images), str(output), str(check_workers),
                             str(Path(__file__).resolve().parents[1])],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe build failed:\n{result.stderr[-4000:]}")
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_bytes"])
