"""The pipeline: behaviours -> dialogs -> QA pairs -> LatentQA files, resumable.

Each stage reads what its work file already holds and does only the rest. Workers call the
model; only the main thread appends results, so a work file never holds half a unit and the
near-duplicate check sees behaviours in one order.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..files import write_json
from . import export, units
from .backends import ChatBackend
from .behaviours import collect_behaviours
from .errors import DatagenError, FieldFailed
from .inputs import kind_of, read_seeds, read_system_records
from .prompts import KINDS
from .store import JsonlLog
from .text import Labels, slugify

log = logging.getLogger("latentqa.datagen")


@dataclass
class GenerateConfig:
    out_dir: Path
    num_behaviours: int | None = None  # default: 5 generated, or every seed
    kinds: tuple[str, ...] = KINDS
    seeds_file: Path | None = None
    qa_pairs: int = 2
    concurrency: int = 4
    max_retries: int = 3
    temperature: float = 0.8
    max_tokens: int = 96
    seed: int = 0
    dedup_threshold: float = 0.75
    progress: bool = True


@dataclass
class Summary:
    out_dir: Path
    labels: int = 0  # complete labels written to the LatentQA files
    records: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # units with no valid output this run
    rejected: int = 0  # invalid model outputs logged (and retried) this run


class _Run:
    """The work files of one output directory and what the workers share."""

    def __init__(self, backend: ChatBackend, cfg: GenerateConfig):
        if cfg.qa_pairs < 1 or cfg.concurrency < 1 or cfg.max_retries < 0:
            raise DatagenError("--qa-pairs and --concurrency must be >= 1, --max-retries >= 0")
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        # Work files live apart so that ``out_dir`` holds only LatentQA files, loadable as a folder.
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.behaviours = JsonlLog(self.work / "behaviours.jsonl")
        self.dialogs = JsonlLog(self.work / "dialogs.jsonl")
        self.qa = JsonlLog(self.work / "qa.jsonl")
        self.rejects = JsonlLog(self.work / "rejected.jsonl")
        self.summary = Summary(self.out)
        self.asker = units.Asker(backend, self.reject, cfg.temperature, cfg.max_tokens,
                                 cfg.max_retries, cfg.seed)
        self.pool = ThreadPoolExecutor(max(1, min(cfg.concurrency, backend.max_workers)))
        # set by the worker that meets an error no retry fixes (the backend is down): queued
        # jobs then fail with it at once instead of each sending its own request
        self.fatal: BaseException | None = None

    def _call(self, fn, *args):
        if self.fatal is not None:
            raise self.fatal
        try:
            return fn(*args)
        except FieldFailed:  # one item's failure: the run goes on
            raise
        except BaseException as e:
            self.fatal = self.fatal or e
            raise

    def reject(self, entry: dict) -> None:
        self.summary.rejected += 1
        log.info("invalid output for %s (%s): %r", entry["key"], entry["reason"],
                 entry["output"][:200])
        self.rejects.append(entry)

    def bar(self, total: int, desc: str, done: int = 0):
        return tqdm(total=total, initial=done, desc=desc, unit="item",
                    disable=not self.cfg.progress, dynamic_ncols=True)

    def run_all(self, jobs: dict[str, tuple], on_result, desc: str, done: int = 0) -> None:
        """Run ``fn(*args)`` for each job; ``on_result(key, value)`` in this thread."""
        with self.bar(done + len(jobs), desc, done) as bar:
            futures = {self.pool.submit(self._call, fn, *args): key
                       for key, (fn, *args) in jobs.items()}
            try:
                for fut in _as_completed(futures):
                    key = futures[fut]
                    try:
                        on_result(key, fut.result())
                    except FieldFailed as e:
                        self.summary.failed.append(str(e))
                        log.warning("%s", e)
                    bar.update()
            except BaseException:
                for fut in futures:  # the backend is down or we were interrupted: stop early
                    fut.cancel()
                raise


def _as_completed(futures):
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


def generate(backend: ChatBackend, cfg: GenerateConfig) -> Summary:
    """Generate (or finish generating) a LatentQA dataset in ``cfg.out_dir``."""
    unknown = set(cfg.kinds) - set(KINDS)
    if unknown or not cfg.kinds:
        raise DatagenError(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    seeds = read_seeds(cfg.seeds_file) if cfg.seeds_file else None
    run = _Run(backend, cfg)
    try:
        collect_behaviours(run, seeds)
        _dialogs_and_qa(run)
    finally:
        run.pool.shutdown(wait=False, cancel_futures=True)
    files = export.build(run.behaviours.records, run.dialogs.records, run.qa.records)
    export.write(run.out, files)
    return _finish(run, files)


def _dialogs_and_qa(run: _Run) -> None:
    have_dialog = {d["label"] for d in run.dialogs.records}
    have_qa = {q["label"] for q in run.qa.records}
    jobs = {}
    for b in run.behaviours.records:
        label = b["label"]
        if b["kind"] != "sqa" and label not in have_dialog:
            jobs[("dialog", label)] = (units.dialog, run.asker, b)
        if label not in have_qa:
            jobs[("qa", label)] = (units.qa_pairs, run.asker, label, b["kind"],
                                   b["description"], run.cfg.qa_pairs)

    def on_result(key, value):
        (run.dialogs if key[0] == "dialog" else run.qa).append(value)

    done = len(have_dialog) + len(have_qa)
    run.run_all(jobs, on_result, "dialogs+qa", done)


def qa_for(backend: ChatBackend, records_file: Path, cfg: GenerateConfig,
           limit: int | None = None) -> Summary:
    """Write QA pairs for existing system prompts: ``system.json`` + ``qa.json`` in out_dir."""
    records = read_system_records(records_file)
    labels = Labels()
    by_label: dict[str, dict] = {}
    for r in records:
        label = r.get("label") or labels.make(kind_of("", r["system"]), slugify(r["system"]))
        labels.taken.add(label)
        r = {"system": r["system"], "stimulus_user": r["stimulus_user"], "label": label}
        if label not in by_label and limit is not None and len(by_label) >= limit:
            continue
        by_label.setdefault(label, {"system": r["system"], "records": []})["records"].append(r)
    run = _Run(backend, cfg)
    try:
        have = {q["label"] for q in run.qa.records}
        jobs = {label: (units.qa_pairs, run.asker, label, kind_of(label, g["system"]),
                        g["system"], cfg.qa_pairs)
                for label, g in by_label.items() if label not in have}
        run.run_all(jobs, lambda key, value: run.qa.append(value), "qa", len(have))
    finally:
        run.pool.shutdown(wait=False, cancel_futures=True)
    qa_of = {q["label"]: q["qa"] for q in run.qa.records}
    files = {"system.json": [r for label, g in by_label.items() if label in qa_of
                             for r in g["records"]],
             "qa.json": {label: qa_of[label] for label in by_label if label in qa_of}}
    export.write(run.out, files)
    return _finish(run, files)


def _finish(run: _Run, files: dict) -> Summary:
    s = run.summary
    s.labels = len(files["qa.json"])
    s.records = {name: len(content) for name, content in files.items() if name != "qa.json"}
    write_json(run.work / "summary.json", {
        "labels": s.labels, "records": s.records, "failed_this_run": s.failed,
        "rejected_this_run": s.rejected})
    return s
