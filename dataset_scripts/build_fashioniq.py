"""Build Fashion-IQ into Parquet + a dataset card from the official raw files.

    python dataset_scripts/build_fashioniq.py --source-dir RAW --images-dir IMAGES --output-dir OUT [--push-to-hub ORG/NAME]

Run with --help for every flag. The logic lives in `collm_hf.data` (`build_cli.build_main("fashioniq", argv)`).
"""

import sys

from collm_hf.apps.commands.build_dataset import build_main


def main(argv=None) -> int:
    return build_main("fashioniq", argv)


if __name__ == "__main__":
    sys.exit(main())
