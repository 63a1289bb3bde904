"""Micro-batching. A request's inputs become a job on a queue; one worker takes the jobs of the same
kind that arrived together (waiting ``window_s`` for company when it was idle) and runs them as one
call to the inference path, in one thread, so two model calls never overlap."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .metrics import Metrics

MAX_CALL_ITEMS = 1024  # inputs in one model call: merging more only makes the first request wait longer


@dataclass
class _Job:
    key: tuple  # jobs with equal keys can share a model call
    items: list
    future: asyncio.Future


class Batcher:
    """One worker that runs ``run(key, items) -> results`` (a sequence as long as items) in one thread,
    merging queued jobs of the same key into one call and giving each job its slice of the results."""

    def __init__(
        self, run: Callable[[tuple, list], Sequence], window_s: float, metrics: Metrics, max_items: int = MAX_CALL_ITEMS
    ):
        self.run, self.window_s, self.metrics, self.max_items = run, window_s, metrics, max_items
        self.queue: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._merged = 1  # requests in the last model call

    def depth(self) -> int:
        return len(self.queue)

    async def submit(self, key: tuple, items: list) -> Sequence:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # started on first use: works under any ASGI host
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        job = _Job(key, items, loop.create_future())
        self.queue.append(job)
        self._wake.set()
        return await job.future

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
        return jobs

    async def _call(self, jobs: list[_Job]) -> None:
        items = [x for j in jobs for x in j.items]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, jobs[0].key, items)
        except Exception as e:
            if len(jobs) > 1:  # find the request at fault: the others still get their answers
                for j in jobs:
                    await self._call([j])
                return
            self.metrics.model_errors += 1
            if not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        self._merged = len(jobs)
        self.metrics.batch_size.observe(len(items), kind=jobs[0].key[0])
        self.metrics.batch_requests.observe(len(jobs), kind=jobs[0].key[0])
        at = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(results[at : at + len(j.items)])
            at += len(j.items)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=True)
