#!/usr/bin/env bash
# Everything a GPU session needs, in one command (aimed at under 10 minutes on one H100; not yet run on one):
#   1. installs this checkout (builds maefast._C; --no-deps keeps the machine's CUDA torch)
#   2. correctness of every Triton kernel on the GPU against the reference: tests/ops (real bf16 / fp16 dots,
#      fixed launch configs), and each benchmark checks its kernel again at full size (column `correct`)
#   3. timings of every op and backend at the issue's shapes (ViT-L/8, 6 x 256 x 256, batch 256, mask 0.75),
#      then full training steps (bench_train: MAE ViT-L/8, CA-MAE ViT-B/16 against the reference pipeline)
#      and embedding (bench_embed: ViT-L/8 against timm + SDPA)
#   4. the table of all records, printed last
# Usage: bash benchmarks/gpu_suite.sh [OUT_DIR]   (default: $OUT when set, else ./gpu_suite_out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_suite_out}}"
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[gpu_suite +$(( $(date +%s) - start ))s] $*"; }

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh needs a CUDA GPU')" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$out/device.txt"

stamp "install"
if ! pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1; then
    tail -30 "$out/install.log"; exit 1
fi
python -c "import maefast, maefast._C, triton, torch; print('torch', torch.__version__, 'triton', triton.__version__, maefast._C.build_info())" | tee -a "$out/device.txt"

stamp "correctness: tests/ops on the GPU"
MAEFAST_AUTOTUNE=0 timeout 300 python -m pytest tests/ops -q -p no:cacheprovider > "$out/tests.log" 2>&1
tests_rc=$?
tail -5 "$out/tests.log"

records="$out/records.jsonl"
: > "$records"
for bench in tokenize unshuffle mae_loss attention train embed; do
    stamp "bench_$bench"
    case "$bench" in attention) limit=180 ;; train) limit=150 ;; *) limit=100 ;; esac
    if ! timeout "$limit" python "benchmarks/bench_$bench.py" --json-out "$records" > "$out/bench_$bench.log" 2>&1; then
        echo "bench_$bench failed or timed out; last lines:"; tail -5 "$out/bench_$bench.log"
    fi
    tail -1 "$out/bench_$bench.log"
done

stamp "done (tests exit code $tests_rc)"
echo
python benchmarks/common.py table "$records" | tee "$out/table.txt"
exit $tests_rc
