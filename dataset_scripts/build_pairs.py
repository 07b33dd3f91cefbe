"""Build image-caption pairs (LLaVA-558k / CC3M shapes) into Parquet + a dataset card from the official raw files.

    python dataset_scripts/build_pairs.py --source-dir RAW --images-dir IMAGES --output-dir OUT [--push-to-hub ORG/NAME]

Run with --help for every flag. The logic lives in `collm_hf.data`, the options in
`collm_hf.apps.commands.build_dataset` (also `collm-hf build-dataset pairs ...`). A failed build prints one line
naming every offending item and exits with status 2, leaving nothing at --output-dir.
"""

import sys

from collm_hf.apps.commands.build_dataset import build_main


def main(argv=None) -> int:
    return build_main("pairs", argv)


if __name__ == "__main__":
    sys.exit(main())
