#!/usr/bin/env bash
# The prepared GPU check (issue 23), one command for one GPU, under 8 minutes on an H200:
#   1. benchmarks/gpu_check.py: DM on CUDA against the CPU for the same draws, train_model likewise, compiled
#      against eager, bf16 against fp32 evaluation, K stacked networks against K in sequence (about 2 minutes);
#   2. benchmarks/speed.py's CUDA rows: K = 1, 5, 20 networks at once against in sequence, DM against the
#      reference-style loop (eager and compiled, fp32), the NAS proxy search, evaluate --repeats 5 end to end;
#   3. if time is left, the CPU scaling rows on the machine's cores (threads against one-thread workers).
# Needs dm_core only (torch, torchvision, numpy, tqdm); no dataset, no network access.
#
#   bash benchmarks/gpu_check.sh [OUT]      OUT: the folder for the results ($OUT, else benchmarks/results/gpu)
#
# Writes, under OUT: checks.json and checks.log (step 1), speed_cuda.json, speed.log and README.md (a copy of
# benchmarks/README.md with the CUDA table spliced in, step 2), speed_cpu_scaling.json (step 3), gpu.txt
# (nvidia-smi). Exit status: 0 when every check passed and speed.py ran, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
budget=${GPU_CHECK_SECONDS:-460}  # the whole script; each step gets what is left, minus a margin for the rest
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv \
  > "$out/gpu.txt" 2>&1 || echo "nvidia-smi failed" >> "$out/gpu.txt"
$python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  >> "$out/gpu.txt" 2>&1

echo "== 1. correctness checks" >&2
timeout $(( $(left) - 260 )) $python benchmarks/gpu_check.py --device cuda --out "$out" 2>&1 | tee "$out/checks.log"
checks=${PIPESTATUS[0]}

echo "== 2. speed.py, CUDA rows ($(left) s left)" >&2
cp benchmarks/README.md "$out/README.md"
timeout $(( $(left) - 40 )) $python benchmarks/speed.py --device cuda --only many dm nas e2e --bf16 never \
  --repeats 3 --many-repeats 3 --many-epochs 30 10 --nas-repeats 3 --nas-steps 100 --e2e-repeats 2 --e2e-epochs 300 \
  --json-out "$out/speed_cuda.json" --readme "$out/README.md" 2>&1 | tee "$out/speed.log"
speed=${PIPESTATUS[0]}

if [ "$(left)" -gt 100 ]; then
  echo "== 3. CPU scaling rows ($(left) s left)" >&2
  timeout $(( $(left) - 10 )) $python benchmarks/speed.py --device cpu --only scaling --many-epochs 4 1 \
    --many-repeats 2 --json-out "$out/speed_cpu_scaling.json" 2>&1 | tail -n 20
fi

echo "checks exit $checks, speed.py exit $speed, $((SECONDS - start)) s in all" | tee -a "$out/checks.log"
[ "$checks" -eq 0 ] && [ "$speed" -eq 0 ]
