"""Where a model call's time goes: the tokenizer reports its time and the tokens it made to the meter
of the calling thread, where one is open (the server opens one around each model call)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

_local = threading.local()


@dataclass
class Meter:
    tokenize_s: float = 0.0  # time inside the tokenizer
    tokens: int = 0  # tokens it made (overflowing windows included)
    total_s: float = 0.0  # the whole call, set when the meter closes

    @property
    def inference_s(self) -> float:
        return max(0.0, self.total_s - self.tokenize_s)


@contextlib.contextmanager
def metered() -> Iterator[Meter]:
    """A meter for the work this thread does inside the block."""
    meter, outer = Meter(), getattr(_local, "meter", None)
    _local.meter = meter
    start = time.perf_counter()
    try:
        yield meter
    finally:
        meter.total_s = time.perf_counter() - start
        _local.meter = outer


def current_meter() -> Meter | None:
    """This thread's open meter (the tokenizer adds its time and tokens to it), or None."""
    return getattr(_local, "meter", None)
