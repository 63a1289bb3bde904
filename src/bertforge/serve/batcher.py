"""Micro-batching and admission. A request's inputs become a job on a bounded queue (past --max-queue
requests or --max-queue-tokens tokens: refused, the caller answers 429); one worker takes the jobs of
the same kind that arrived together (waiting ``window_s`` for company when it was idle) and runs them
as one call to the inference path, in one thread, so two model calls never overlap. A job whose client
hung up or whose time ran out leaves the queue (a model call already under way runs on; its answer is dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..meter import Meter, metered
from .metrics import Metrics

MAX_CALL_ITEMS = 1024  # inputs in one model call: merging more only makes the first request wait longer


class Overloaded(Exception):
    """The queue is full: ``retry_after`` is the server's guess, in whole seconds, of when it has room."""

    def __init__(self, why: str, retry_after: int):
        super().__init__(why)
        self.why, self.retry_after = why, retry_after


class TimedOut(Exception):
    """The request's time ran out: ``queued`` while it still waited (no model call had started on it)."""

    def __init__(self, queued: bool):
        super().__init__("queued" if queued else "in a model call")
        self.queued = queued


class Gone(Exception):
    """The client hung up before its answer."""


@dataclass
class Timing:
    """Where one request's time went (the model call's figures are the whole call's, shared by
    ``requests`` requests)."""

    queue_s: float = 0.0
    tokenize_s: float = 0.0
    inference_s: float = 0.0
    tokens: int = 0
    requests: int = 0


@dataclass
class _Job:
    key: tuple  # jobs with equal keys can share a model call
    items: list
    future: asyncio.Future
    weight: int = 0  # its tokens, counted where --max-queue-tokens is set
    arrived: float = field(default_factory=time.perf_counter)
    timing: Timing = field(default_factory=Timing)


class Batcher:
    """One worker that runs ``run(key, items) -> results`` (a sequence as long as items) in one thread,
    merging queued jobs of the same key into one call and giving each job its slice of the results."""

    def __init__(
        self,
        run: Callable[[tuple, list], Sequence],
        window_s: float,
        metrics: Metrics,
        max_items: int = MAX_CALL_ITEMS,
        max_queue: int | None = None,
        max_queue_tokens: int | None = None,
    ):
        self.run, self.window_s, self.metrics, self.max_items = run, window_s, metrics, max_items
        self.max_queue, self.max_queue_tokens = max_queue, max_queue_tokens
        self.queue: deque[_Job] = deque()
        self.queued_tokens = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._merged = 1  # requests in the last model call
        self._call_s = 0.1  # a running mean of a model call's time, for Retry-After

    def depth(self) -> int:
        return len(self.queue)

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained: its calls (as many requests merged a call as
        last time) after the one under way."""
        calls = 1 + math.ceil(len(self.queue) / max(1, self._merged))
        return max(1, math.ceil(calls * self._call_s))

    def _admit(self, weight: int) -> None:
        if self.max_queue is not None and len(self.queue) >= self.max_queue:
            raise Overloaded(f"{len(self.queue)} requests queued, --max-queue {self.max_queue}", self.retry_after())
        # a request over the whole token budget still runs when nothing waits: it could never run otherwise
        if self.max_queue_tokens is not None and self.queue and self.queued_tokens + weight > self.max_queue_tokens:
            raise Overloaded(
                f"{self.queued_tokens:,} tokens queued, --max-queue-tokens {self.max_queue_tokens:,}",
                self.retry_after(),
            )

    async def submit(
        self,
        key: tuple,
        items: list,
        weight: int = 0,
        timeout: float | None = None,
        gone: Awaitable | None = None,
    ) -> tuple[Sequence, Timing]:
        """The results for ``items`` and where their time went. Raises Overloaded (no room), TimedOut
        (past ``timeout`` seconds) or Gone (``gone`` finished first: the client hung up)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # started on first use: works under any ASGI host
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        try:
            self._admit(weight)
        except Overloaded:
            self.metrics.rejected["queue_full"] += 1
            raise
        job = _Job(key, items, loop.create_future(), weight)
        self.queue.append(job)
        self.queued_tokens += weight
        self._wake.set()
        watch = asyncio.ensure_future(gone) if gone is not None else None
        try:
            done, _ = await asyncio.wait(
                [job.future, *([watch] if watch else [])], timeout=timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            if watch is not None:
                watch.cancel()
        if job.future in done:
            return job.future.result(), job.timing
        queued = self._drop(job)
        if watch is not None and watch in done:
            self.metrics.rejected["disconnected"] += 1
            raise Gone()
        self.metrics.rejected["timeout_queued" if queued else "timeout_running"] += 1
        raise TimedOut(queued)

    def _drop(self, job: _Job) -> bool:
        """Take ``job`` off the queue (True) or, when a model call has it already, drop its answer (False)."""
        job.future.cancel()
        try:
            self.queue.remove(job)
        except ValueError:
            return False
        self.queued_tokens -= job.weight
        return True

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The worker was idle: give concurrent requests a moment to join, where there are any (several
            # queued now, or merged last time). A lone client's requests wait at most once, after a burst:
            # waiting on every one would add the whole window to each of its requests.
            if self.queue and self.window_s > 0 and (len(self.queue) > 1 or self._merged > 1):
                await asyncio.sleep(self.window_s)
            while self.queue:  # while busy, requests queue up by themselves: no more waiting
                await self._call(self._take())

    def _take(self) -> list[_Job]:
        first = self.queue.popleft()
        jobs, n, rest = [first], len(first.items), deque()
        while self.queue:
            job = self.queue.popleft()
            if job.key == first.key and n + len(job.items) <= self.max_items:
                jobs.append(job)
                n += len(job.items)
            else:
                rest.append(job)
        self.queue = rest
        self.queued_tokens -= sum(j.weight for j in jobs)
        return jobs

    def _metered(self, key: tuple, items: list) -> tuple[Sequence, Meter]:
        with metered() as meter:
            results = self.run(key, items)
        return results, meter

    async def _call(self, jobs: list[_Job]) -> None:
        items = [x for j in jobs for x in j.items]
        started = time.perf_counter()
        self.metrics.calls_running += 1
        try:
            results, meter = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._metered, jobs[0].key, items
            )
        except Exception as e:
            self.metrics.calls_running -= 1
            if len(jobs) > 1:  # find the request at fault: the others still get their answers
                for j in jobs:
                    await self._call([j])
                return
            self.metrics.model_errors += 1
            if not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        self.metrics.calls_running -= 1
        self._merged = len(jobs)
        self._call_s = 0.8 * self._call_s + 0.2 * meter.total_s
        kind = jobs[0].key[0]
        self.metrics.model_call(kind, len(items), len(jobs), meter)
        at = 0
        for j in jobs:
            j.timing = Timing(started - j.arrived, meter.tokenize_s, meter.inference_s, meter.tokens, len(jobs))
            self.metrics.queue_time.observe(j.timing.queue_s, kind=kind)
            if not j.future.done():
                j.future.set_result(results[at : at + len(j.items)])
            at += len(j.items)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=True)
