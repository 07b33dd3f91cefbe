"""`collm-hf index`: embed a gallery dataset into a saved index (the code lives in `collm_hf.apps.commands.search`)."""

from .search import add_index_arguments as add_arguments
from .search import run_index as run

__all__ = ["add_arguments", "run"]
