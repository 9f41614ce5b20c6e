#!/usr/bin/env bash
# Everything a GPU session measures, in one command that fits one 10-minute call, install included:
#   install      python -m pip install --no-deps --no-build-isolation -e .  (keeps the machine's CUDA torch; goes
#                on without maefast._C when it cannot be built); stops the suite at once when the install fails
#   tests        a GPU smoke subset: the Triton kernels of tests/ops against the references in bf16 (opcheck and
#                fp32/fp16 variants left out), the fused-op model test, the models compiled on the GPU against
#                eager (tests/models/test_compile.py::test_compiled_model_on_cuda_matches_eager), and the GPU
#                loader against the CPU one (tests/data/test_gpu_pipeline.py, where DALI is installed)
#   op benches   bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention at the issue's shapes
#   jobs         bench_train (MAE ViT-L/8, then CA-MAE ViT-B/16) and bench_embed (ViT-L/8): maefast tuned and
#                compiled, and eager, against the reference pipeline / timm, eager and compiled
#   profile      profile_step: where a training step's and an embedding step's GPU time goes
#   dali         the DALI wheels carried in parts (gpu_suite_dali/, benchmarks/wheel_parts.py) joined and
#                installed once every part is on the machine (benchmarks/RESULTS.md, "Installing DALI")
#   loader       bench_loader: every layout, DALI GPU vs DALI CPU vs torch (the PyTorch loader alone without DALI)
#   e2e          bench_train_e2e: `maefast train` on packed shards and on PNG sites, beside bench_train's figure
#   table        every record as one table, printed last
# Each step gets its share of a fixed budget (BUDGET seconds, default 540) through `timeout`: a step may use
# what earlier steps left unused, never time planned for later ones; a benchmark stopped by its limit still
# prints the summary of what it measured. The shares are estimates that leave room for compile warm-ups;
# $OUT/steps.tsv records each step's seconds and status, for rebalancing them.
#
# Usage: bash benchmarks/gpu_suite.sh [--dry-run] [--budget SECONDS] [OUT_DIR]   (OUT_DIR default: $OUT, else
#        ./gpu_suite_out). --dry-run: the same flow on a CPU, for syntax and flow: no install, the test
#        selection only collected, every benchmark's --quick path (budget default 1500 s: CPU compiles are slow).
# The script runs as one function (main, at the end), so editing it during a run does not change that run.
set -uo pipefail

stamp() { echo "[gpu_suite +$(( $(date +%s) - start ))s] $*"; }

# run_step NAME SHARE_PERCENT COMMAND...: runs COMMAND (log: $OUT/NAME.log) until this step's deadline, the
# suite's start + the shares of the budget up to and including this one.
run_step() {
    local name="$1" share="$2"
    shift 2
    planned=$(( planned + budget * share / 100 ))
    local limit=$(( start + planned - $(date +%s) ))
    if [ "$limit" -lt 5 ]; then
        stamp "$name: skipped, no time left in the budget"
        printf '%s\t%s\t0\tskipped (no time left)\n' "$name" "$limit" >> "$out/steps.tsv"
        return 0
    fi
    stamp "$name (limit ${limit}s): $*"
    local began=$(date +%s) status
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    case "$rc" in 0) status=ok ;; 124|137) status="stopped at the time limit" ;; *) status="failed (exit $rc)" ;; esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$(( $(date +%s) - began ))" "$status" >> "$out/steps.tsv"
    if [ "$rc" != 0 ]; then
        echo "  $name: $status; last lines of $out/$name.log:"
        tail -5 "$out/$name.log" | sed 's/^/    /'
    fi
    grep '"kind": "summary"' "$out/$name.log" | tail -2 | cut -c1-400 | sed 's/^/  /'
    return "$rc"
}

main() {
    cd "$(dirname "$0")/.."
    dry_run=0 budget="" out=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry_run=1 ;;
            --budget) budget="$2"; shift ;;
            -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
            *) out="$1" ;;
        esac
        shift
    done
    out="${out:-${OUT:-gpu_suite_out}}"
    budget="${budget:-$([ "$dry_run" = 1 ] && echo 1500 || echo 540)}"
    mkdir -p "$out"
    records="$out/records.jsonl"
    : > "$records"
    printf 'step\tlimit_s\telapsed_s\tstatus\n' > "$out/steps.tsv"
    start=$(date +%s)
    planned=0  # seconds of the budget given to the steps so far

    if [ "$dry_run" = 1 ]; then
        quick=(--quick --device cpu)
        # on a shared CPU, busy-waiting OpenMP threads of compiled code slow every op that runs after it, several-fold
        export OMP_WAIT_POLICY=PASSIVE
        echo "dry run on the CPU: --quick paths, no install, tests collected only" | tee "$out/device.txt"
    else
        quick=()
        python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
            || { echo "gpu_suite.sh needs a CUDA GPU (or --dry-run)"; exit 1; }
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$out/device.txt"
        if ! run_step install 12 python -m pip install --no-deps --no-build-isolation -e .; then
            echo "gpu_suite: the install failed (python -m pip install --no-deps --no-build-isolation -e .); stopping."
            tail -30 "$out/install.log"
            exit 1
        fi
        if [ -f gpu_suite_dali/manifest.json ]; then
            run_step dali 1 python -m benchmarks.wheel_parts install gpu_suite_dali
        fi
    fi
    python -c "import maefast, torch; from maefast.ops.backend import cpp_extension as cpp; print('torch', \
torch.__version__, '| maefast._C', 'built' if cpp() else 'not built (CPU ops: reference)')" | tee -a "$out/device.txt" \
        || { echo "gpu_suite: maefast does not import; stopping."; exit 1; }

    # bf16 (dtype1) Triton tests of tests/ops, the fused-op model test, the model compiled on the GPU, and the GPU
    # loader against the CPU one (tests/data/test_gpu_pipeline.py, with DALI)
    smoke=(tests/ops tests/models/test_compile.py tests/data/test_gpu_pipeline.py
           -k "(triton and not dtype0 and not dtype2 and not opcheck and not test_compile) or on_cuda")
    if [ "$dry_run" = 1 ]; then
        run_step tests 4 python -m pytest -q -p no:cacheprovider --collect-only "${smoke[@]}"
    else
        run_step tests 8 env MAEFAST_AUTOTUNE=0 python -m pytest -q -p no:cacheprovider "${smoke[@]}"
    fi
    tests_rc=$?
    [ -f "$out/tests.log" ] && tail -1 "$out/tests.log" | sed 's/^/  /'

    options=("${quick[@]}" --json-out "$records")
    run_step bench_tokenize 4 python -m benchmarks.bench_tokenize "${options[@]}"
    run_step bench_unshuffle 2 python -m benchmarks.bench_unshuffle "${options[@]}"
    run_step bench_mae_loss 3 python -m benchmarks.bench_mae_loss "${options[@]}"
    run_step bench_attention 6 python -m benchmarks.bench_attention "${options[@]}"
    if [ "$dry_run" = 1 ]; then
        models=(mae_vit_debug_patch8_64 camae_vit_debug_patch8_64)
    else
        models=(mae_vit_large_patch8_256 camae_vit_base_patch16_256)
    fi
    run_step bench_train_mae 24 python -m benchmarks.bench_train --model "${models[0]}" "${options[@]}"
    run_step bench_train_camae 9 python -m benchmarks.bench_train --model "${models[1]}" "${options[@]}"
    run_step bench_embed 11 python -m benchmarks.bench_embed "${options[@]}"
    run_step profile_step 5 python -m benchmarks.profile_step "${options[@]}"
    run_step bench_loader 6 python -m benchmarks.bench_loader "${options[@]}"
    run_step bench_train_e2e 9 python -m benchmarks.bench_train_e2e --compare "$records" "${options[@]}"

    stamp "done (tests exit code $tests_rc)"
    echo
    column -t -s $'\t' "$out/steps.tsv" | tee "$out/steps.txt"
    echo
    python -m benchmarks.common table "$records" | tee "$out/table.txt"
    exit $tests_rc
}

main "$@"
