"""Build MTCIR into Parquet + a dataset card from the official raw files (`generate_mtcir.py` instead generates a
new MTCIR-style dataset for your own images with an LLM).

    python dataset_scripts/build_mtcir.py --source-dir RAW --images-dir IMAGES --output-dir OUT [--push-to-hub ORG/NAME]

Run with --help for every flag. The logic lives in `collm_hf.data`, the options in
`collm_hf.apps.commands.build_dataset` (also `collm-hf build-dataset mtcir ...`). A failed build prints one line
naming every offending item and exits with status 2, leaving nothing at --output-dir.
"""

import sys

from collm_hf.apps.commands.build_dataset import build_main


def main(argv=None) -> int:
    return build_main("mtcir", argv)


if __name__ == "__main__":
    sys.exit(main())
