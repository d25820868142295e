#!/usr/bin/env bash
# The CUDA checks of sfedlora, meant to take under 8 minutes on one GPU (each step has its own timeout, 570 s
# in all, so a device session's 600 s command limit leaves room): the tests marked `cuda`, `sfedlora bench` at
# 4, 16 and 64 clients with 128-token per-client batches (bf16, against the same-precision sequential PEFT
# peer), `bench --eval` at 16 clients, and `bench --memory` at 100 clients. Results (logs and --json files)
# go to $OUT (default benchmarks/device-results/).
#
# Runs from the repository root with the machine's own python3 (torch with CUDA, transformers, peft,
# safetensors, pyyaml, tqdm, psutil, pytest) and sfedlora from source (PYTHONPATH=src): nothing is installed.
# A GPU machine that reaches neither the hub nor PyPI needs SmolLM2's tokenizer: `make device-carry` copies it
# into .device-carry/ (git-ignored), which travels with the working tree. The model is SmolLM2-135M's
# architecture with random weights (workload smollm2-random): timings and memory depend on the shapes only.
set -uo pipefail
OUT=${OUT:-benchmarks/device-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SFEDLORA_CACHE="${SFEDLORA_CACHE:-$PWD/.device-carry/cache}"
PY=${PYTHON:-python3}
status=0
step() { echo "== $*"; }

step device
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'
print(torch.__version__, torch.cuda.get_device_name(), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')" \
  | tee "$OUT/device.txt" || exit 1

step "CUDA tests"
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS: the resume test compares bit for bit
timeout 150 $PY -m pytest -q -m cuda -p no:cacheprovider tests/integration/test_cuda.py \
  tests/unit/test_batched_equals_peft.py 2>&1 | tee "$OUT/cuda-tests.log" || status=1

for n in 4 16 64; do
  step "bench, $n clients"
  limit=$(( n == 64 ? 120 : (n == 16 ? 90 : 60) ))
  timeout "$limit" $PY -m sfedlora.cli bench --workload smollm2-random --clients "$n" --steps 3 --batch 1 --seq 128 \
    --repeats 3 --precision bf16 --json "$OUT/bench-$n.json" 2>&1 | tee "$OUT/bench-$n.log" || status=1
done

step "bench --eval, 16 clients"
timeout 60 $PY -m sfedlora.cli bench --eval --workload smollm2-random --clients 16 --steps 2 --batch 1 --seq 128 \
  --repeats 3 --precision bf16 --json "$OUT/eval-16.json" 2>&1 | tee "$OUT/eval-16.log" || status=1

step "bench --memory, 100 clients"
$PY -c "import json
for i in range(6000):
    print(json.dumps({'prompt': f'Write the number {i} in words, then count to {i % 7 + 3}.', 'response': ' '.join(str(k) for k in range(i % 40 + 10))}))" \
  > "$OUT/instructions.jsonl"
timeout 90 $PY -m sfedlora.cli bench --memory --workload smollm2-135m --clients 100 --steps 1 --batch 1 --seq 128 \
  --precision bf16 --set model.name=smollm2-random --set "data.source=$OUT/instructions.jsonl" \
  --set data.task=instruction --json "$OUT/memory-100.json" 2>&1 | tee "$OUT/memory-100.log" || status=1
rm -f "$OUT/instructions.jsonl"
exit $status
