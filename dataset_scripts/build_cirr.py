"""Build CIRR (rc2) into Parquet + a dataset card from the official raw files.

    python dataset_scripts/build_cirr.py --source-dir RAW --images-dir IMAGES --output-dir OUT [--push-to-hub ORG/NAME]

Run with --help for every flag. The logic lives in `collm_hf.data`, the options in
`collm_hf.apps.commands.build_dataset` (also `collm-hf build-dataset cirr ...`). A failed build prints one line
naming every offending item and exits with status 2, leaving nothing at --output-dir.
"""

import sys

from collm_hf.apps.commands.build_dataset import build_main


def main(argv=None) -> int:
    return build_main("cirr", argv)


if __name__ == "__main__":
    sys.exit(main())
