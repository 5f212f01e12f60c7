"""One thread owns the model; requests wait in a queue and compatible ones run as one batch.

``submit(fn, payload, key)`` returns a ``concurrent.futures.Future``. The worker takes the
oldest job, then every queued job with the same ``fn`` and a non-None ``key`` (up to
``max_batch``), and calls ``fn([payload, ...])``, which returns one result per payload (an
exception instance fails just that one). If a merged call raises, its jobs are rerun one by
one, so one bad request cannot fail the others. A job whose deadline passed, or whose caller
gave up (cancelled the future), before it started is dropped without running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger("latentqa.serve")


class QueueFull(Exception):
    """Too many jobs are waiting."""


class Expired(Exception):
    """The job's deadline passed before the model got to it."""


@dataclass
class Job:
    fn: Callable[[list], list]
    payload: Any
    key: Hashable | None
    deadline: float | None
    future: Future = field(default_factory=Future)


class Worker:
    def __init__(self, *, max_queue: int = 64, max_batch: int = 16, name="latentqa-model"):
        self.max_queue, self.max_batch = max_queue, max_batch
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.batches = 0  # calls made, and the largest merge, for tests and /health
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, payload, key: Hashable | None = None, *,
               timeout: float | None = None) -> Future:
        job = Job(fn, payload, key, None if timeout is None else time.monotonic() + timeout)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"{len(self._jobs)} requests are already waiting")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # ---- the worker thread ------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if first.key is not None:
                for job in list(self._jobs):
                    if len(batch) >= self.max_batch:
                        break
                    if job.fn == first.fn and job.key == first.key:  # bound methods: ==, not is
                        self._jobs.remove(job)
                        batch.append(job)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                if job.deadline is not None and now > job.deadline:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(Expired("timed out in the queue"))
                elif job.future.set_running_or_notify_cancel():
                    live.append(job)
            if live:
                self._run(live)

    def _run(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        try:
            results = jobs[0].fn([j.payload for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"{jobs[0].fn} returned {len(results)} results for "
                                   f"{len(jobs)} jobs")
        except BaseException as e:  # noqa: BLE001 - reported to the callers
            if len(jobs) > 1:
                for job in jobs:  # find the culprit; the others still get answers
                    self._run([job])
                return
            if not isinstance(e, Exception):
                log.exception("worker job raised %s", type(e).__name__)
            results = [e]
        for job, result in zip(jobs, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
