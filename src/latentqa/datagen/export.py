"""Build the LatentQA files from the work files; only complete labels are written.

A goal or persona label appears in control, stimulus, stimulus_completion and system (its
instruction doubles as the system prompt); an sqa label only in control, as upstream.
``control_thought`` is left empty: we do not generate a reasoning trace.
"""

from __future__ import annotations

from pathlib import Path

from ..files import write_json

FILES = ("control.json", "stimulus.json", "stimulus_completion.json", "system.json", "qa.json")


def build(behaviours: list[dict], dialogs: list[dict], qa: list[dict]) -> dict[str, object]:
    dialog_of = {d["label"]: d for d in dialogs}
    qa_of = {q["label"]: q["qa"] for q in qa}
    out = {name: [] for name in FILES[:-1]}
    out["qa.json"] = {}
    for b in behaviours:
        label = b["label"]
        if label not in qa_of:
            continue
        if b["kind"] == "sqa":
            out["control.json"].append({"control_user": b["description"], "label": label})
        else:
            d = dialog_of.get(label)
            if d is None:
                continue
            out["control.json"].append({"control_user": d["control_user"], "label": label})
            out["stimulus.json"].append({
                "control_user": d["control_user"], "control_thought": "",
                "control_model": d["control_model"], "stimulus_user": d["stimulus_user"],
                "label": label})
            out["stimulus_completion.json"].append({
                "control_user": d["control_user"], "control_model": d["control_model"],
                "stimulus_user": d["stimulus_user"], "stimulus_model": d["stimulus_model"],
                "label": label})
            out["system.json"].append({"system": d["control_user"],
                                       "stimulus_user": d["stimulus_user"], "label": label})
        out["qa.json"][label] = qa_of[label]
    return out


def write(out_dir: str | Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        write_json(Path(out_dir) / name, content, indent=1, ensure_ascii=False)
