"""``/v1/steer``: steering runs as jobs, through a function the server is given.

The steering itself lives elsewhere (``latentqa.steering``). The server needs one callable,

    steer_fn(config: dict, out_dir: pathlib.Path) -> dict

which trains a steering adapter for the target as ``config`` says, writes what it makes under
``out_dir`` and returns a JSON-able summary; ``"adapter_dir"`` in it names the peft adapter
directory to load for chat. It runs on the model's worker thread, so it has the model to itself
(reads and replies wait meanwhile). ``find_steer_fn(reader)`` gets it from
``latentqa.steering.serve_steer(reader, config, out_dir)`` when that exists; without it
``/v1/steer`` answers 501.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .errors import ApiError, as_api_error

log = logging.getLogger("latentqa.serve")

SteerFn = Callable[[dict, Path], dict]


def find_steer_fn(reader) -> SteerFn | None:
    """``latentqa.steering.serve_steer`` bound to ``reader``, or None if there is none."""
    try:
        steering = importlib.import_module("latentqa.steering")
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - a broken steering package must not stop serving
        log.warning("latentqa.steering failed to import (%s); /v1/steer is off", e)
        return None
    hook = getattr(steering, "serve_steer", None)
    if hook is None:
        return None
    return lambda config, out_dir: hook(reader, config, out_dir)


class SteerJobs:
    def __init__(self, worker, run, steer_fn: SteerFn | None, adapters, out_root, *,
                 max_pending: int = 2, keep: int = 100):
        self.worker, self.run = worker, run
        self.steer_fn, self.adapters = steer_fn, adapters
        self.out_root = Path(out_root)
        self.max_pending, self.keep = max_pending, keep
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.steer_fn is not None

    def submit(self, config: dict, load: bool) -> dict:
        if self.steer_fn is None:
            raise ApiError(501, "steering is unavailable: this server has no steering "
                           "function (the latentqa.steering package is not installed or "
                           "offers no serve_steer)", type="not_implemented")
        with self._lock:
            pending = sum(j["status"] in ("queued", "running") for j in self.jobs.values())
            if pending >= self.max_pending:
                raise ApiError(503, f"{pending} steering jobs are queued or running; wait for "
                               "one to finish", type="overloaded", headers={"Retry-After": "30"})
            job_id = uuid.uuid4().hex[:12]
            job = {"id": job_id, "status": "queued", "created": time.time(), "started": None,
                   "finished": None, "config": config,
                   "out_dir": str(self.out_root / job_id), "result": None, "adapter": None,
                   "error": None}
            self.jobs[job_id] = job
            self._forget_old()
        future = self.worker.submit(self.run, lambda: self._work(job, load))
        future.add_done_callback(lambda f: self._done(job, f))
        return dict(job)

    def get(self, job_id: str) -> dict:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiError(404, f"no steering job {job_id!r}", type="not_found",
                               param="job_id")
            return dict(job)

    def _work(self, job: dict, load: bool) -> dict:
        with self._lock:
            job["status"], job["started"] = "running", time.time()
        out_dir = Path(job["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        result = self.steer_fn(dict(job["config"]), out_dir)
        result = json.loads(json.dumps(result if isinstance(result, dict) else
                                       {"result": result}, default=str))
        adapter = None
        if load and result.get("adapter_dir"):
            adapter = self.adapters.load(str(result["adapter_dir"]))["name"]
        return {"result": result, "adapter": adapter}

    def _done(self, job: dict, future) -> None:
        with self._lock:
            job["finished"] = time.time()
            error = future.exception()
            if error is None:
                job.update(future.result(), status="done")
                return
            known = as_api_error(error)
            job["status"] = "failed"
            job["error"] = known.message if known else f"{type(error).__name__}: {error}"
            if known is None:
                log.error("steering job %s failed", job["id"], exc_info=error)

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j["status"] in ("done", "failed")]
        for k in finished[:max(0, len(self.jobs) - self.keep)]:
            del self.jobs[k]
