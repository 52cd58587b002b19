#!/usr/bin/env bash
# Issue 11's GPU check (and issue 12's SDXL figures) as ONE device call that ends inside 10 minutes.
#
# Once, here, from the project's root (fills the git-ignored .gpu/ with the wheels the GPU image lacks:
# diffusers, importlib_metadata, torchao for --quantize fp8; and the stock-diffusers anchor script):
#     EXTRA_WHEELS=torchao ../shared/gpu/prepare.sh
# Then one device call (the machine has torch, transformers, pyarrow, pillow, click; no Ray, so the
# end-to-end run uses --executor local):
#     run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)        # SD 1.5
#     run(command="bash benchmarks/gpu_check.sh sdxl", carry=[".gpu"], timeout_s=600)   # SDXL
# What comes back under $OUT: anchor.json (SD only), gpu_throughput-<family>.json, check.log; the
# reply's tail is the table. Commit the JSON as benchmarks/results/gpu_throughput-<card>[-sdxl]-<date>.json
# (the name the benchmark gives without --out).
#
# Order inside the budget (what does not fit is recorded as skipped): stock diffusers at its batch
# sizes, the engine eager, the engine with every switch on (one cold compile: ~1.5 min on an H200 by
# the shared anchors), fp8, the host-sync count, then `sdbatch run` end to end on 512 rows (SDXL: 128)
# with the CLI's defaults, whose compile comes from the on-disk cache the engine run filled.
set -uo pipefail
family=${1:-sd}
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
started=$SECONDS

if [ ! -d .gpu/whl ]; then
  echo "no .gpu/whl: run ../shared/gpu/prepare.sh here first and carry .gpu" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 2
# sdbatch's packages are top-level folders mapped to sdbatch.* by pyproject.toml; without an install,
# a namespace folder of links does the same.
mkdir -p /tmp/shim/sdbatch
for pkg in cli cluster jobs manifests pipeline; do ln -sfn "$PWD/$pkg" "/tmp/shim/sdbatch/$pkg"; done
export PYTHONPATH=/tmp/site:/tmp/shim PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export SDBATCH_CACHE=/tmp/sdbatch-cache
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" || exit 2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,power.draw --format=csv || true

if [ "$family" = sd ]; then
  # stock diffusers through the shared anchor script on the same card: its figures sit beside the
  # recorded anchors and show the card is the one they were taken on
  timeout 100 python3 .gpu/anchor_diffusers.py --steps 30 --batches 32 --reps 1 --out "$OUT/anchor.json" \
    || echo "anchor: exit $?"
  args=(--family sd --stock-batches 16,32,64 --engine-batches 32 --end-to-end 512)
else
  args=(--family sdxl --stock-batches 4,8,16 --engine-batches 8 --end-to-end 128)
fi
budget=$((520 - (SECONDS - started)))
timeout $((budget + 60)) python3 benchmarks/gpu_throughput.py "${args[@]}" --variants eager,all,fp8 \
  --reps 2 --budget-s "$budget" --out "$OUT/gpu_throughput-$family.json"
echo "gpu_check: exit $?, $((SECONDS - started))s"
