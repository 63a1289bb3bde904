"""Tasks run over fork worker processes, results in task order, with a bounded number in flight."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def fork_pool(workers: int):
    """A fork pool (workers inherit module state and the memory maps), or None to run in this process.

    Tokenizers' own thread pool is switched off in the workers: the processes are the parallelism.
    """
    if workers <= 1:
        yield None
        return
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the forked workers
    try:
        workers_pool = multiprocessing.get_context("fork").Pool(workers)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        yield workers_pool
    finally:
        workers_pool.terminate()
        workers_pool.join()


def ordered(pool, fn: Callable, tasks: Iterable, window: int) -> Iterator:
    """fn over tasks, results in task order, at most ``window`` tasks in flight (so memory stays bounded)."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
