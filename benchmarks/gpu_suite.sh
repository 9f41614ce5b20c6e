#!/usr/bin/env bash
# A GPU session's measurements in calls that each fit a 10-minute slot; the first call returns the headline
# figures (benchmarks/RESULTS.md, "Targets").
#   first call (no --rest):
#     install     python -m pip install --no-deps --no-build-isolation -e . (keeps the machine's CUDA torch; goes
#                 on without maefast._C when it cannot be built), plus any wheels in --wheels DIR (torchao for
#                 FP8, timm for the embedding baseline: the GPU machine has no network); stops at once if it fails
#     headline    one Python process (benchmarks/headline.py), each part's records printed as measured:
#                 MAE ViT-L/8 training (maefast compiled; the reference compiled), the profile of that same
#                 compiled step (no second compile), ViT-L/8 embedding (maefast; timm compiled), then the FP8
#                 training and embedding and the FP8 embedding's cosine gate
#   --rest (a second call; most important first): CA-MAE ViT-B/16 training, the attention benchmark, the FP8
#     quality gates on a trained model (benchmarks/fp8_quality.py), the GPU smoke tests, the other op
#     benchmarks, then the GPU-resident loader's steps (benchmarks/RESULTS.md, "Ready to measure"):
#     dali          DALI's wheels, carried in parts into --wheels DIR (benchmarks/wheel_parts.py), joined and
#                   installed once every part is there (skipped, naming the missing parts, before that)
#     tests_loader  the CUDA loader tests (tests/data/test_gpu_pipeline.py: the GPU pipeline against the CPU one,
#                   batches handed over without a copy, the PyTorch loader's copy stream)
#     bench_train_e2e  `maefast train` ViT-L/8 on packed shards and on PNG sites against the random-tensor figure
#     bench_loader  every layout: DALI GPU vs DALI CPU vs the PyTorch loader (when DALI is installed)
#   The loader's own call: --rest --steps dali,tests_loader,bench_train_e2e,bench_loader.
# Every compiled model is compiled regionally (each block once; identical blocks share the graph), maefast
# and the baselines alike. Compile caches: inductor's and Triton's caches live in one folder, CACHE (default
# ~/.cache/maefast/gpu_suite, or $MAEFAST_SUITE_CACHE), which survives between calls on one machine; each call
# first restores the archives it finds (--cache-from DIR, default ./gpu_suite_cache, then OUT_DIR) and ends by
# writing the cache to OUT_DIR as at most two archives of at most 16 MB (benchmarks/cache_archive.py), which
# a later call on a fresh machine restores when they are carried to it in ./gpu_suite_cache.
# The plan printed first gives each step's expected seconds; each step may use what earlier steps left unused,
# never time planned for later ones (a benchmark stopped by its limit still prints what it measured), and
# $OUT/steps.tsv records each step's real seconds, for rebalancing the plan.
#
# Usage: bash benchmarks/gpu_suite.sh [--rest] [--steps A,B] [--parts P,Q] [--dry-run] [--budget SECONDS]
#                                     [--cache-from DIR] [--wheels DIR] [OUT_DIR]
#   OUT_DIR default: $OUT, else ./gpu_suite_out. --steps: only these steps of the call; --parts: the headline's
#   parts (benchmarks/headline.py). --dry-run: the same flow on a CPU, to check it: no install, the tests
#   only collected, every benchmark's --quick path (budget default 1500 s: CPU compiles are slow).
# The script runs as one function (main, at the end), so editing it during a run does not change that run.
set -uo pipefail

stamp() { echo "[gpu_suite +$(( $(date +%s) - start ))s] $*"; }

# expected seconds of each step on a fresh H100 / H200 with empty caches (the 2026-12-02 review's estimates,
# with regional compilation; the headline's own parts: benchmarks/headline.py EXPECTED_S; the loader's steps:
# issue 25's estimates: DALI's 240 MB of wheels installed, a compiled ViT-L/8 measured on random tensors when
# --compare has no figure, 2 x 150 steps of `maefast train` with their screens, 6 layouts x 3 loaders)
declare -A EXPECTED=([install]=40 [headline]=345 [archive]=15
                     [bench_train_camae]=120 [bench_attention]=60 [fp8_quality]=240 [tests]=220
                     [bench_tokenize]=30 [bench_unshuffle]=15 [bench_mae_loss]=25 [dali]=60 [tests_loader]=60
                     [bench_train_e2e]=300 [bench_loader]=210)
FIRST=(install headline)
REST=(bench_train_camae bench_attention fp8_quality tests bench_tokenize bench_unshuffle bench_mae_loss
      dali tests_loader bench_train_e2e bench_loader)

# run_step NAME COMMAND...: runs COMMAND (log: $OUT/NAME.log) until this step's deadline: the start plus the
# budget's share of the expected seconds of the steps up to and including this one.
run_step() {
    local name="$1"
    shift
    planned=$(( planned + EXPECTED[$name] ))
    local limit=$(( start + budget * planned / plan_total - $(date +%s) ))
    if [ "$limit" -lt 5 ]; then
        stamp "$name: skipped, no time left in the budget"
        printf '%s\t%s\t%s\t0\tskipped (no time left)\n' "$name" "${EXPECTED[$name]}" "$limit" >> "$out/steps.tsv"
        return 0
    fi
    stamp "$name (limit ${limit}s, expected ${EXPECTED[$name]}s): $*"
    local began=$(date +%s) status
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    case "$rc" in 0) status=ok ;; 124|137) status="stopped at the time limit" ;; *) status="failed (exit $rc)" ;; esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "${EXPECTED[$name]}" "$limit" "$(( $(date +%s) - began ))" "$status" \
        >> "$out/steps.tsv"
    if [ "$rc" != 0 ]; then
        echo "  $name: $status; last lines of $out/$name.log:"
        tail -5 "$out/$name.log" | sed 's/^/    /'
    fi
    grep -E '"kind": "(summary|quality|part)"' "$out/$name.log" | cut -c1-400 | sed 's/^/  /'
    return "$rc"
}

skip_step() {  # skip_step NAME REASON: a step that does not run in this call (its time goes to the next steps)
    planned=$(( planned + EXPECTED[$1] ))
    stamp "$1: skipped, $2"
    printf '%s\t%s\t0\t0\tskipped (%s)\n' "$1" "${EXPECTED[$1]}" "$2" >> "$out/steps.tsv"
}

selected() {  # selected NAME: whether --steps (if given) names this step
    [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]
}

main() {
    cd "$(dirname "$0")/.."
    dry_run=0 rest=0 budget="" out="" only="" parts="" cache_from="gpu_suite_cache" wheels="gpu_suite_wheels"
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry_run=1 ;;
            --rest) rest=1 ;;
            --budget) budget="$2"; shift ;;
            --steps) only="$2"; shift ;;
            --parts) parts="$2"; shift ;;
            --cache-from) cache_from="$2"; shift ;;
            --wheels) wheels="$2"; shift ;;
            -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;p}' "$0"; exit 0 ;;
            *) out="$1" ;;
        esac
        shift
    done
    out="${out:-${OUT:-gpu_suite_out}}"
    budget="${budget:-$([ "$dry_run" = 1 ] && echo 1500 || echo 540)}"
    mkdir -p "$out"
    cache="${MAEFAST_SUITE_CACHE:-$HOME/.cache/maefast/gpu_suite}"
    export TORCHINDUCTOR_CACHE_DIR="$cache/inductor" TRITON_CACHE_DIR="$cache/triton"
    call=$([ "$rest" = 1 ] && echo rest || echo first)
    records="$out/records_$call.jsonl"
    : > "$records"
    printf 'step\texpected_s\tlimit_s\telapsed_s\tstatus\n' > "$out/steps_$call.tsv"
    ln -sf "steps_$call.tsv" "$out/steps.tsv"
    start=$(date +%s)
    planned=0  # expected seconds of the steps so far

    steps=()
    for name in $([ "$rest" = 1 ] && echo "${REST[@]}" || echo "${FIRST[@]}"); do
        if selected "$name" && { [ "$dry_run" = 0 ] || [ "$name" != install ]; }; then steps+=("$name"); fi
    done
    steps+=(archive)
    plan_total=0
    echo "gpu_suite plan ($call call, budget ${budget}s; expected seconds on a fresh GPU, cold caches):"
    for name in "${steps[@]}"; do
        plan_total=$(( plan_total + EXPECTED[$name] ))
        printf '  %-18s %4s s  (by %4s s)\n' "$name" "${EXPECTED[$name]}" "$plan_total"
    done

    for from in "$cache_from" "$out"; do
        [ -d "$from" ] && python -m benchmarks.cache_archive restore "$from" "$cache" | sed 's/^/  cache: /'
    done

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
    fi
    if [[ " ${steps[*]} " == *" install "* ]]; then
        install=(python -m pip install --no-deps --no-build-isolation -e .)
        if ls "$wheels"/*.whl > /dev/null 2>&1; then
            install=(bash -c "python -m pip install --no-deps --no-index $wheels/*.whl && ${install[*]}")
        fi
        if ! run_step install "${install[@]}"; then
            echo "gpu_suite: the install failed (${install[*]}); stopping."
            tail -30 "$out/install.log"
            exit 1
        fi
    fi
    python -c "import maefast, torch; from maefast.ops.backend import cpp_extension as cpp; print('torch', \
torch.__version__, '| maefast._C', 'built' if cpp() else 'not built (CPU ops: reference)')" | tee -a "$out/device.txt" \
        || { echo "gpu_suite: maefast does not import; stopping."; exit 1; }

    options=("${quick[@]}" --json-out "$records")
    tests_rc=0
    for name in "${steps[@]}"; do
        case "$name" in
            install|archive) ;;
            headline) run_step headline python -m benchmarks.headline "${options[@]}" ${parts:+--parts "$parts"} ;;
            bench_train_camae)
                model=$([ "$dry_run" = 1 ] && echo camae_vit_debug_patch8_64 || echo camae_vit_base_patch16_256)
                run_step bench_train_camae python -m benchmarks.bench_train --model "$model" "${options[@]}" ;;
            fp8_quality) run_step fp8_quality python -m benchmarks.fp8_quality "${options[@]}" ;;
            tests)
                # bf16 (dtype1) Triton tests of tests/ops, the fused-op model test, the models compiled on the GPU
                smoke=(tests/ops tests/models/test_compile.py
                       -k "(triton and not dtype0 and not dtype2 and not opcheck and not test_compile) or on_cuda")
                if [ "$dry_run" = 1 ]; then
                    run_step tests python -m pytest -q -p no:cacheprovider --collect-only "${smoke[@]}"
                else
                    run_step tests env MAEFAST_AUTOTUNE=0 python -m pytest -q -p no:cacheprovider "${smoke[@]}"
                fi
                tests_rc=$?
                [ -f "$out/tests.log" ] && tail -1 "$out/tests.log" | sed 's/^/  /' ;;
            dali)
                # the parts arrive one per call (64 MiB each): until the last has come, say which are missing
                if [ ! -f "$wheels/manifest.json" ]; then
                    skip_step dali "no DALI parts in $wheels"
                elif ! missing=$(python -m benchmarks.wheel_parts status "$wheels"); then
                    skip_step dali "$missing"
                elif [ "$dry_run" = 1 ]; then
                    skip_step dali "dry run: every part is in $wheels, not installed"
                else
                    run_step dali python -m benchmarks.wheel_parts install "$wheels"
                fi ;;
            tests_loader)
                loader_tests=(tests/data/test_gpu_pipeline.py -k on_cuda)
                if [ "$dry_run" = 1 ]; then
                    run_step tests_loader python -m pytest -q -p no:cacheprovider --collect-only "${loader_tests[@]}"
                else
                    run_step tests_loader python -m pytest -q -p no:cacheprovider -rs "${loader_tests[@]}"
                fi
                loader_rc=$?
                [ "$tests_rc" = 0 ] && tests_rc=$loader_rc
                [ -f "$out/tests_loader.log" ] && tail -1 "$out/tests_loader.log" | sed 's/^/  /' ;;
            bench_train_e2e)
                # the random-tensor baseline: the first call's record when it is in OUT, else measured in the step
                run_step bench_train_e2e python -m benchmarks.bench_train_e2e --compare "$out/records_first.jsonl" \
                    "${options[@]}" ;;
            bench_loader)
                if python -c "from maefast.errors import installed; assert installed('nvidia.dali')" 2>/dev/null; then
                    run_step bench_loader python -m benchmarks.bench_loader "${options[@]}"
                else
                    skip_step bench_loader "no DALI (the dali step installs it from its parts)"
                fi ;;
            *) run_step "$name" python -m "benchmarks.$name" "${options[@]}" ;;
        esac
    done

    run_step archive python -m benchmarks.cache_archive save "$cache" "$out"
    grep -h '"action"' "$out/archive.log" | sed 's/^/  cache: /'
    stamp "done (tests exit code $tests_rc)"
    echo
    column -t -s $'\t' "$out/steps.tsv" | tee "$out/steps_$call.txt"
    echo
    python -m benchmarks.common table "$records" | tee "$out/table_$call.txt"
    exit $tests_rc
}

main "$@"
