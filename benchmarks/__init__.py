"""maefast's benchmarks: a package, run from the repository root with `python -m benchmarks.<script>`.

Op micro-benchmarks (one implementation per op in its script's `plan()`, shared with pytest-benchmark through
test_ops.py): bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention. Whole jobs (jobs.py): bench_train,
bench_embed, bench_train_e2e (`maefast train` on packed shards), profile_step; headline (the headline figures in one
process: training, its profile, embedding, their FP8 variants); fp8_quality (FP8's quality gates); and bench_loader.
gpu_suite.sh runs them on a GPU in calls of 10 minutes (cache_archive.py carries the compile caches between them);
common.py holds the shared command line, timing and records.
"""
