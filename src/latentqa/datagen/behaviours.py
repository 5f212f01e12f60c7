"""Stage 1: behaviours, from a seed file or written by the model, near-duplicates dropped.

A generated behaviour comes from a numbered slot; the slot fixes its kind and category and
(through the asker) its sampling seed, so a resumed run asks exactly what was left to ask.
Acceptance happens in the main thread, one result at a time, so the duplicate check and the
labels see every accepted behaviour.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait

from . import units
from .errors import FieldFailed
from .prompts import CATEGORIES
from .text import Labels, NearDuplicates, slugify


def collect_behaviours(run, seeds: list[dict] | None) -> None:
    """Fill ``run.behaviours`` up to the target: from seeds, or generated slot by slot."""
    cfg, log_ = run.cfg, run.behaviours
    dedup = NearDuplicates(cfg.dedup_threshold)
    for b in log_.records:
        dedup.add(b["description"])
    labels = Labels(b["label"] for b in log_.records)

    def accept(b: dict, slot) -> bool:
        twin = dedup.find(b["description"])
        if twin is not None:
            run.reject({"key": f"behaviour/{slot}", "attempt": 0,
                         "reason": f"near-duplicate of {twin!r}", "output": b["description"]})
            return False
        dedup.add(b["description"])
        b["label"] = labels.make(b["kind"], b["category"], slugify(b["description"]))
        log_.append({"slot": slot, **b})
        return True

    if seeds is not None:
        target = min(cfg.num_behaviours or len(seeds), len(seeds))
        done = {b["slot"] for b in log_.records}
        for slot, seed in enumerate(seeds):
            if len(log_.records) >= target:
                break
            if f"seed-{slot}" not in done:
                accept(dict(seed), f"seed-{slot}")
        return

    target = cfg.num_behaviours if cfg.num_behaviours is not None else 5
    done = {b["slot"] for b in log_.records}

    # Interleave kinds so a small run still has each: slot i -> kind i % len(kinds).
    def kind_cat(slot: int):
        kind = cfg.kinds[slot % len(cfg.kinds)]
        cats = list(CATEGORIES[kind])
        return kind, cats[(slot // len(cfg.kinds)) % len(cats)]

    budget = iter(s for s in range(target * 4 + 8) if s not in done)  # duplicates cost slots
    inflight: dict[Future, int] = {}
    with run.bar(target, "behaviours", len(log_.records)) as bar:
        try:
            while True:
                while len(log_.records) + len(inflight) < target:
                    slot = next(budget, None)
                    if slot is None:
                        break
                    kind, cat = kind_cat(slot)
                    fut = run.pool.submit(units.behaviour_text, run.asker, slot, kind, cat)
                    inflight[fut] = slot
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    slot = inflight.pop(fut)
                    try:
                        text = fut.result()
                    except FieldFailed as e:
                        run.summary.failed.append(str(e))
                        continue
                    kind, cat = kind_cat(slot)
                    if len(log_.records) < target and accept(
                            {"kind": kind, "category": cat, "description": text}, slot):
                        bar.update()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            raise
    if len(log_.records) < target:
        run.summary.failed.append(f"only {len(log_.records)} of {target} behaviours: the "
                                  "other tries were invalid or near-duplicates")
