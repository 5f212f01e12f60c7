#!/bin/bash
# Write .lease/p1 and .lease/p2, what the two lease calls carry (scripts/gpu_lease/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.lease/" .git/info/exclude || echo "/.lease/" >> .git/info/exclude
rm -rf .lease && mkdir -p .lease/p1/wheels .lease/p2 .lease/tmp/data .lease/tmp/onpolicy
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .lease/p1/wheels \
  "peft==$(python -c 'import peft; print(peft.__version__)')" \
  "gguf==$(python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
# the converted model's folder holds the tokenizer; loading once makes sure it exists
MODEL=$(python -c "
from latentqa.models import builtin_cache_path, builtin_gguf_path, load_model
load_model('smollm2-135m'); print(builtin_gguf_path('smollm2-135m'), builtin_cache_path('smollm2-135m'))")
read -r GGUF CACHED <<<"$MODEL"
head -c 50000000 "$GGUF" > .lease/p1/gguf.part1
tail -c +50000001 "$GGUF" > .lease/p2/gguf.part2
sha256sum "$GGUF" | cut -d' ' -f1 > .lease/p2/gguf.sha256
mkdir -p .lease/tmp/tok && cp "$CACHED"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .lease/tmp/tok/
tar czf .lease/p1/tokenizer.tgz -C .lease/tmp tok
cp -r ../shared/data/latentqa .lease/tmp/data/
if [ -f ../runs/onpolicy/labelled.jsonl ]; then cp ../runs/onpolicy/labelled.jsonl .lease/tmp/onpolicy/; fi
tar czf .lease/p2/data.tgz -C .lease/tmp data onpolicy
rm -rf .lease/tmp
du -sh .lease/p1 .lease/p2
