"""The ``bertforge`` command: each subcommand is a plain typed function; its docstring is its --help."""

from __future__ import annotations

# each module registers its commands on the app, in the order --help lists them
# isort: off
from . import encoding  # noqa: F401
from . import searching  # noqa: F401
from . import ranking  # noqa: F401
from . import training  # noqa: F401
from . import predicting  # noqa: F401
from . import shrinking  # noqa: F401

# isort: on
from .common import BATCH_BUDGET, app, main
from .encoding import read_pairs as _read_pairs

__all__ = ["BATCH_BUDGET", "_read_pairs", "app", "main"]
