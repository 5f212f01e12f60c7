"""``/v1/steer``: steering runs as jobs, through a function the server is given.

The steering itself lives elsewhere (``latentqa.steering``). The server needs one callable,

    steer_fn(config: dict, out_dir: pathlib.Path) -> dict

which trains a steering adapter for the target as ``config`` says, writes what it makes under
``out_dir`` and returns a JSON-able summary; ``"adapter_dir"`` in it names the peft adapter
directory to load for chat. It runs on the model's worker thread, so it has the model to itself
(reads and replies wait meanwhile). ``find_steer_fn(reader)`` gets it from
``latentqa.steering.serve_steer(reader, config, out_dir)`` when that exists; without it
``/v1/steer`` answers 501.

A request is checked before it is accepted: a steering function may carry a ``check(config)``
attribute that raises for a config it would refuse (``find_steer_fn``'s checks
``latentqa.steering``'s keys and types, ``check_steer_config``), which is then a 422 naming
the field, and no job or output folder is made. ``out_dir`` is created when the job starts;
a job that fails leaves it only if it wrote something there.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import shutil
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Callable

from ..errors import LatentQAError
from ..validation import FieldError, find_bad_text, type_name
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

    def steer_fn(config, out_dir):
        return hook(reader, config, out_dir)

    steer_fn.check = check_steer_config
    return steer_fn


STEER_KEYS = ("control", "prompts", "eval_prompts")  # what serve_steer takes besides SteerConfig
# SteerConfig values a run would fail on, or train nothing with, hours after a 202
AT_LEAST_ONE = ("steps", "batch_size", "lora_r", "lora_alpha", "reply_tokens", "eval_tokens",
                "log_every")


def check_steer_config(config: dict) -> None:
    """Refuse, naming the key, a config ``latentqa.steering.serve_steer`` would refuse once
    running: no ``control``, unknown keys, mistyped or out-of-range ``SteerConfig`` values
    (``lr`` 0 or less, ``log_every`` 0...), a control or prompts file that does not read.
    Files are read, nothing is run."""
    from ..steering.control import qa_pairs, read_control_file
    from ..steering.prompts import read_prompts
    from ..steering.run import SteerConfig

    kinds = {f.name: str(f.type) for f in fields(SteerConfig)}
    unknown = sorted(set(config) - set(kinds) - set(STEER_KEYS))
    if unknown:
        raise FieldError(f"config: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(STEER_KEYS)}, {', '.join(sorted(kinds))}",
                         f"config.{unknown[0]}")
    control = config.get("control")
    if control is None:
        raise FieldError("config.control is missing: give an instruction (text), a control "
                         "file on the server, or a list of [question, answer] pairs",
                         "config.control")
    if not isinstance(control, (list, str)) or not control or (
            isinstance(control, str) and not control.strip()):
        raise FieldError("config.control: expected an instruction, a control file or a list "
                         f"of [question, answer] pairs, got {type_name(control)}",
                         "config.control")
    try:
        if isinstance(control, list):
            qa_pairs(control, "config.control")
        elif control.endswith(".json") or Path(control).is_file():
            read_control_file(control)
    except (LatentQAError, OSError, ValueError) as e:
        said = str(e)
        raise FieldError(said if said.startswith("config.control") else
                         f"config.control: {said}", "config.control") from None
    for key in ("prompts", "eval_prompts"):
        value = config.get(key)
        if value is None:
            continue
        if key == "prompts" and isinstance(value, str):  # a prompts file on the server
            try:
                read_prompts(value)
            except (LatentQAError, OSError, ValueError) as e:
                raise FieldError(f"config.prompts: {e}", "config.prompts") from None
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip()
                                                  for v in value):
            raise FieldError(f"config.{key}: expected a list of prompts (non-empty strings)"
                             + (" or a prompts file" if key == "prompts" else ""),
                             f"config.{key}")
    for key, kind in kinds.items():
        if key in config and not _is(config[key], kind):
            raise FieldError(f"config.{key}: expected {kind}, got {type_name(config[key])}",
                             f"config.{key}")
    cfg = SteerConfig(**{k: v for k, v in config.items() if k in kinds})
    ranges = {key: (getattr(cfg, key) >= 1, "at least 1") for key in AT_LEAST_ONE}
    ranges.update(lr=(0 < cfg.lr < math.inf, "a positive number"),  # NaN fails both
                  fluency_weight=(0 <= cfg.fluency_weight < math.inf, "0 or more"),
                  eval_share=(0 <= cfg.eval_share < 1, "at least 0 and less than 1"))
    for key, (ok, rule) in ranges.items():
        if not ok:
            raise FieldError(f"config.{key} must be {rule}, got {getattr(cfg, key)}",
                             f"config.{key}")
    if cfg.fluency_tokens not in ("read", "prompt"):
        raise FieldError("config.fluency_tokens must be 'read' or 'prompt', got "
                         f"{cfg.fluency_tokens!r}", "config.fluency_tokens")


def _is(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return True  # a type this check does not know: the steering function checks it


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
        self.check(config)
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

    def check(self, config: dict) -> None:
        """A 422 naming the field for a config the steering function would refuse."""
        bad = find_bad_text(config, "config")
        if bad:
            raise ApiError(422, f"{bad[0]} {bad[1]}", param=bad[0])
        check = getattr(self.steer_fn, "check", None)
        if check is None:
            return
        try:
            check(config)
        except FieldError as e:
            raise ApiError(422, str(e), param=e.param) from None
        except (LatentQAError, ValueError, TypeError) as e:
            raise ApiError(422, str(e).strip() or type(e).__name__, param="config") from None

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
        try:
            result = self.steer_fn(dict(job["config"]), out_dir)
        except BaseException:
            if out_dir.is_dir() and not any(out_dir.iterdir()):  # nothing written: no trace
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
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
