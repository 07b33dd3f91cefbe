"""CoLLM composed image retrieval demo (Gradio): `python examples/app.py`, or a Hugging Face Space's `app.py`.

    python examples/app.py                                   # the quickstart's model, the synthetic world gallery
    python examples/app.py --model DIR --gallery D           # any model; a gallery dataset or `collm-hf index` folder

As a Space: copy this file as `app.py`, put `collm-hf[demo]` in `requirements.txt` and the model folder (or its
hub id) in `--model` / $COLLM_MODEL. The logic lives in `collm_hf.apps.demo`.
"""

import os
import sys

from collm_hf.apps.cli import run_script


def add_arguments(parser):
    parser.add_argument("--model", default=os.environ.get("COLLM_MODEL", os.path.join("collm-quickstart", "model")),
                        help="saved CoLLM folder or hub id (default: $COLLM_MODEL or collm-quickstart/model)")
    parser.add_argument("--gallery", default=os.environ.get("COLLM_GALLERY"),
                        help="gallery dataset (folder, Parquet, hub id) or index folder from `collm-hf index` "
                             "(default: the synthetic world's gallery)")
    parser.add_argument("--images", default=None, help="gallery dataset to show result images from, for an index folder")
    parser.add_argument("--config", default="gallery", help="dataset config of the gallery (default: gallery)")
    parser.add_argument("--split", default=None, help="dataset split of the gallery")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="re-embed an index folder made by another model (default: refuse it, naming both)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed for the default gallery")
    parser.add_argument("-k", type=int, default=8, help="default number of results")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")


def serve(args) -> int:
    from collm_hf.apps.demo import build_demo, launch

    demo = build_demo(args.model, args.gallery, images=args.images, k=args.k, device=args.device, seed=args.seed,
                      config=args.config, split=args.split, rebuild_index=args.rebuild_index)
    launch(demo, host=args.host, port=args.port)
    return 0


def main(argv=None) -> int:
    """Build the demo and serve it; a missing model or gallery prints one line and exits with status 2."""
    return run_script("app.py", add_arguments, serve, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
