"""Copy a trained decoder into the package as a shipped default, in bf16.

    python scripts/ship_decoder.py runs/smollm2-135m/checkpoints/step-0000270 \
        src/latentqa/decoders/smollm2-135m --command "latentqa train --config ..."

Writes adapter_model.safetensors (bf16), adapter_config.json and latentqa_decoder.json (with
the command, git revision and the source directory recorded in ``extra``). The model card is
written by hand beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentqa.decoder import SIDECAR
from latentqa.files import replace_dir
from latentqa.provenance import source_revision
from latentqa.train.report import read_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source", help="a decoder or checkpoint directory written by latentqa train")
    ap.add_argument("dest")
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--target-spec", default="smollm2-135m")
    args = ap.parse_args()
    src, dest = Path(args.source), Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = args.target_spec
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    spec = json.loads((src / SIDECAR).read_text())
    spec["target"] = args.target_spec
    run_config = src.parent.parent / "config.json"  # a checkpoint inside a training run
    if src.parent.name == "checkpoints" and run_config.exists():
        cfg = json.loads(run_config.read_text())
        spec.setdefault("extra", {}).update(
            {k: cfg.get(k) for k in ("held_out", "split_seed", "system_recovery", "plain_share",
                                     "data", "max_steps", "lr", "batch_size", "seed")},
            trained_steps=int(src.name.split("-")[-1]))
        stages = src.parent.parent / "stages.jsonl"  # every start of the run, to this step
        if stages.exists():
            step = spec["extra"]["trained_steps"]
            spec["extra"]["stages"] = [row for _, row in read_rows(stages)
                                       if row["from_step"] < step]
    spec.setdefault("extra", {}).update(
        {"command": args.command, **source_revision(), "source": str(src),
         "shipped_dtype": "bfloat16"})
    (tmp / SIDECAR).write_text(json.dumps(spec, indent=2) + "\n")
    keep = dest / "MODEL_CARD.md"
    if keep.exists():
        (tmp / "MODEL_CARD.md").write_text(keep.read_text())
    replace_dir(tmp, dest)
    size = (dest / "adapter_model.safetensors").stat().st_size
    print(f"shipped {src} -> {dest} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
