#!/bin/bash
# Lease call 1 (carry .lease/p1): keep the GGUF's first half, install the wheels, smoke-test the
# CUDA paths of training and reading on a tiny random llama with SmolLM2's tokenizer.
set -x
T0=$(date +%s)
mkdir -p /tmp/lease && cp .lease/p1/gguf.part1 /tmp/lease/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .lease/p1/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__,
peft.__version__, torch.cuda.is_available())"
tar xzf .lease/p1/tokenizer.tgz -C /tmp/lease
python3 - <<'P'
import sys, torch
sys.path.insert(0, "tests")
from conftest import tiny_config
from transformers import AutoTokenizer
from latentqa.models import build_from_config
tok = AutoTokenizer.from_pretrained("/tmp/lease/tok")
cfg = tiny_config("llama"); cfg.vocab_size = len(tok)
torch.manual_seed(0)
build_from_config(cfg).save_pretrained("/tmp/lease/tiny"); tok.save_pretrained("/tmp/lease/tiny")
P
D='data=["tests/fixtures/data/good"]'
COMMON="model=/tmp/lease/tiny batch_size=2 eval_examples=4"
python3 -m latentqa.cli train "$D" $COMMON read_layers=[2] max_steps=4 eval_every=2 \
  save_every=2 out_dir=/tmp/lease/smoke1 --overwrite 2>&1 | tail -4
python3 -m latentqa.cli train "$D" $COMMON read_layers=[1,2,3] read_together=true max_steps=3 \
  eval_every=3 save_every=3 max_minutes=1 out_dir=/tmp/lease/smoke2 --overwrite 2>&1 | tail -4
python3 -m latentqa.cli read --decoder /tmp/lease/smoke1/decoder --target /tmp/lease/tiny \
  --allow-other-target --system "You are a pirate." --user "Hi" -q "Who is the assistant?" \
  --max-new-tokens 8 2>&1 | tail -2
for d in smoke1 smoke2; do [ -f /tmp/lease/$d/decoder/adapter_model.safetensors ] || echo "SMOKE FAILED: $d"; done
echo "stage 1 done in $(( $(date +%s) - T0 )) s"
