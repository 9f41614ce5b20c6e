"""maefast's benchmarks: a package, run from the repository root with `python -m benchmarks.<script>`.

Op micro-benchmarks (one implementation per op in its script's `plan()`, shared with pytest-benchmark through
test_ops.py): bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention. Whole jobs (jobs.py): bench_train,
bench_embed, bench_train_e2e (`maefast train` on packed shards), profile_step; and bench_loader. gpu_suite.sh runs
them all on a GPU in one call; common.py holds the shared command line, timing and records.
"""
