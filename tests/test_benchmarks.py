"""The benchmarks package: importable without path tricks, its op plans and job summaries sound, the profile's
kernel classification right on the names GPUs show, and gpu_suite.sh valid shell. (The benchmarks themselves
run with `python -m pytest benchmarks/ --benchmark-only` and `bash benchmarks/gpu_suite.sh --dry-run`.)"""
import importlib
import json
import os
import pkgutil
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks
from benchmarks import bench_attention, bench_mae_loss, bench_tokenize, bench_unshuffle, common, jobs, wheel_parts
from benchmarks.profile_step import classify

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_module_imports():
    names = [info.name for info in pkgutil.iter_modules(benchmarks.__path__)]
    assert {"bench_train", "bench_embed", "profile_step", "bench_train_e2e", "test_ops"} <= set(names)
    for name in names:
        importlib.import_module(f"benchmarks.{name}")


def test_no_import_path_edits_in_benchmarks_or_tests():
    edit = re.compile(r"sys\.path(\.insert|\.append|\[:0\]\s*=)")
    for path in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/**/*.py")]:
        assert not edit.search(path.read_text()), f"{path} edits sys.path; import through the packages instead"


@pytest.mark.parametrize("quick", [True, False])
def test_op_plans_name_each_case_once_without_building_it(quick):
    device = torch.device("cpu")
    specs = [spec for module in (bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention)
             for spec in module.plan(device, quick)]
    assert len({spec.id for spec in specs}) == len(specs)
    assert all("reference" in spec.backends and spec.passes for spec in specs)


def test_job_summary_names_the_fastest_baseline_and_what_did_not_run(capsys):
    def failing():
        raise RuntimeError("no kernel for this shape")
    job = jobs.Job({"maefast": lambda: time.sleep(0.002), "reference_compiled": failing,
                    "reference": lambda: time.sleep(0.02), "timm": lambda: time.sleep(0.05)},
                   unavailable={"timm_compiled": "timm is not installed"})
    rec = common.Recorder("test", torch.device("cpu"))
    summary = jobs.run_job(rec, job, torch.device("cpu"), reps=2, crops_per_step=8, flops_per_crop=1e9,
                           matmul_flops=1e12, case="toy")
    assert summary["vs"] == "reference" and summary["ratio"] > 1
    assert set(summary["ratios"]) == {"reference", "timm"}
    assert summary["not_run"]["reference_compiled"].startswith("RuntimeError: no kernel")
    assert summary["not_run"]["timm_compiled"] == "timm is not installed"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"bench": "test", "kind": "summary"')


MAEFAST = {"_attention_fwd_kernel": "attention", "_tokenize_fwd_kernel": "tokenize"}


@pytest.mark.parametrize("kernel, ops, group, tags", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", ["aten::addmm", "aten::linear"], "gemm", set()),
    ("nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNT", ["aten::mm"], "gemm", set()),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64",
     ["aten::_scaled_dot_product_cudnn_attention", "aten::scaled_dot_product_attention"], "attention", set()),
    ("_attention_fwd_kernel", ["maefast::flash_attention_qknorm"], "attention", set()),
    ("_tokenize_fwd_kernel", ["maefast::tokenize"], "maefast", set()),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", ["aten::zeros",
     "maefast::tokenize"], "maefast", set()),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>",
     ["aten::copy_", "aten::_to_copy", "aten::to"], "elementwise_copy_norm", {"cast"}),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>",
     ["aten::copy_", "aten::clone", "aten::contiguous"], "elementwise_copy_norm", {"copy"}),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>",
     ["aten::native_layer_norm", "aten::layer_norm"], "elementwise_copy_norm", {"norm"}),
    ("triton_per_fused__to_copy_native_layer_norm_3", ["CompiledFunction"], "elementwise_copy_norm",
     {"cast", "norm"}),
    ("triton_poi_fused_add_gelu_7", ["CompiledFunction"], "elementwise_copy_norm", set()),
    ("triton_tem_fused_mm_0", ["CompiledFunction"], "gemm", set()),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>",
     ["aten::_foreach_add_", "Optimizer.step#AdamW.step"], "elementwise_copy_norm", {"optimizer"}),
    ("Memcpy HtoD (Pageable -> Device)", [], "other", set()),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", ["aten::_scaled_dot_product_flash_attention_for_cpu"],
     "attention", set()),
])
def test_profile_classifies_kernels_by_name_and_launching_ops(kernel, ops, group, tags):
    assert classify(kernel, ops, MAEFAST) == (group, tags)


def test_gpu_suite_is_valid_shell():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


def test_profile_breakdown_attributes_gpu_kernels_to_their_ops_and_keeps_the_rest():
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import Kernel

    from benchmarks.profile_step import breakdown

    def event(name, kernels=(), parent=None, device=DeviceType.CPU, us=0.0):
        return SimpleNamespace(name=name, kernels=list(kernels), cpu_parent=parent, device_type=device,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))
    to = event("aten::to")
    to_copy = event("aten::_to_copy", parent=to)
    copy = event("aten::copy_", [Kernel("direct_copy_kernel_cuda", 0, 30.0)], parent=to_copy)
    mm = event("aten::mm", [Kernel("nvjet_tst_128x256", 0, 100.0)])
    on_device = [event("direct_copy_kernel_cuda", device=DeviceType.CUDA, us=30.0),
                 event("nvjet_tst_128x256", device=DeviceType.CUDA, us=100.0),
                 event("triton_poi_fused_add_0", device=DeviceType.CUDA, us=20.0)]  # launched outside any op
    result = breakdown([to, to_copy, copy, mm, *on_device], torch.device("cuda"), {})
    assert result.total_us == 150.0
    assert result.groups["gemm"] == 100.0 and result.groups["elementwise_copy_norm"] == 50.0
    assert result.tags["cast"] == 30.0 and result.kernels["triton_poi_fused_add_0"][:2] == [20.0, 1]


def test_wheels_carried_in_parts_join_only_whole_and_name_what_is_missing(tmp_path):
    """DALI's wheels go to the GPU machine in parts, one per call (benchmarks/wheel_parts.py): the parts join to the
    same files, a missing part is named, a damaged one refused."""
    rng = np.random.default_rng(0)
    wheels = []
    for name, size in (("a-1.0-py3-none-any.whl", 70_000), ("b-2.0-py3-none-any.whl", 5_000)):
        wheels.append(tmp_path / name)
        wheels[-1].write_bytes(rng.bytes(size))
    parts = tmp_path / "parts"
    manifest = wheel_parts.split(wheels, parts, part_bytes=20_000)
    assert len(manifest["parts"]) == -(-manifest["bytes"] // 20_000) >= 4
    assert all(p["bytes"] <= 20_000 for p in manifest["parts"])
    joined = wheel_parts.join(parts, tmp_path / "joined")
    assert [p.read_bytes() for p in joined] == [w.read_bytes() for w in wheels]
    third = parts / manifest["parts"][2]["name"]
    content = third.read_bytes()
    third.unlink()
    assert wheel_parts.missing(parts) == [third.name] and wheel_parts.main(["status", str(parts)]) == 1
    with pytest.raises(wheel_parts.MissingParts, match=third.name):
        wheel_parts.join(parts, tmp_path / "again")
    third.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    with pytest.raises(ValueError, match="damaged in transfer"):
        wheel_parts.join(parts, tmp_path / "again")


def test_cache_archive_keeps_the_newest_files_within_its_parts_and_restores_them(tmp_path):
    from benchmarks import cache_archive
    cache, out, restored = tmp_path / "cache", tmp_path / "out", tmp_path / "restored"
    generator = torch.Generator().manual_seed(0)
    files = {}
    for index in range(6):  # 300 KB of incompressible bytes each, oldest first
        path = cache / ("inductor" if index % 2 else "triton") / f"entry{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        files[path] = torch.randint(0, 256, (300_000,), generator=generator, dtype=torch.uint8).numpy().tobytes()
        path.write_bytes(files[path])
        os.utime(path, (1_000_000 + index, 1_000_000 + index))
    result = cache_archive.save(cache, out, parts=2, part_mb=0.5)  # room for 3 of the 6 files
    parts = sorted(out.glob("compile_cache.tar.gz.*"))
    assert [p.name for p in parts] == result["parts"] and len(parts) == 2
    assert all(p.stat().st_size <= 0.5 * 2**20 for p in parts)
    assert result["files"] == 3 and result["left_out"] == 3
    assert cache_archive.restore(out, restored)["files"] == 3
    newest = sorted(files, key=lambda p: p.stat().st_mtime)[3:]
    for path in files:
        copy = restored / path.relative_to(cache)
        assert copy.exists() == (path in newest)
        if copy.exists():
            assert copy.read_bytes() == files[path]
    assert cache_archive.restore(out, restored)["files"] == 0  # what the cache holds is kept


def test_cache_archive_refuses_members_outside_the_cache(tmp_path):
    import io
    import tarfile

    from benchmarks import cache_archive
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 2
        archive.addfile(member, io.BytesIO(b"hi"))
    (tmp_path / "compile_cache.tar.gz.0").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="not a file inside the cache"):
        cache_archive.restore(tmp_path, tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.slow
def test_gpu_suite_dry_run_checks_both_calls_on_the_cpu(tmp_path):
    """The suite's flow on a CPU: the plan, the headline process (its embedding part here, to stay short), the
    cache archived into OUT and restored by the next call on an empty cache, the second call (two of its steps)."""
    out = tmp_path / "out"
    env = {**os.environ, "MAEFAST_SUITE_CACHE": str(tmp_path / "cache")}
    env.pop("TRITON_INTERPRET", None)
    first = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--parts", "embed",
                            "--cache-from", str(tmp_path / "none"), str(out)], capture_output=True, text=True,
                           env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert re.search(r"headline\s+345 s", first.stdout)  # the suite's plan, then the headline's own
    assert re.search(r"embed\s+expected\s+90 s", (out / "headline.log").read_text())
    records = [json.loads(line) for line in (out / "records_first.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "summary" and r["bench"] == "embed" and r["value"] > 0 for r in records if "kind" in r)
    assert any(r.get("kind") == "part" and r["case"] == "embed" and r["status"] == "ok" for r in records)
    steps = (out / "steps_first.tsv").read_text()
    assert "\nheadline\t345\t" in steps and "\narchive\t15\t" in steps and "failed" not in steps
    parts = sorted(out.glob("compile_cache.tar.gz.*"))
    assert 1 <= len(parts) <= 2 and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    env["MAEFAST_SUITE_CACHE"] = str(tmp_path / "fresh_cache")
    second = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--rest", "--steps",
                             "tests,bench_unshuffle", "--cache-from", str(out), str(out)], capture_output=True,
                            text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    restored = [json.loads(line.split("cache: ", 1)[1]) for line in second.stdout.splitlines()
                if line.startswith("  cache: ") and '"restore"' in line]
    assert restored and restored[0]["files"] > 0
    rest = [json.loads(line) for line in (out / "records_rest.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "summary" and r["bench"] == "unshuffle" for r in rest)
    assert "bench_train_camae" not in (out / "steps_rest.tsv").read_text()  # --steps chose two steps


def test_gpu_suite_loader_steps_wait_for_every_dali_part_then_run_on_the_cpu(tmp_path):
    """The loader's call (--rest --steps dali,tests_loader) in a dry run: the dali step names the parts still
    missing in --wheels and is skipped (the call goes on); with every part there it would install (a dry run
    says so); the CUDA loader tests are collected."""
    wheel = tmp_path / "a-1.0-py3-none-any.whl"
    wheel.write_bytes(np.random.default_rng(0).bytes(50_000))
    wheels = tmp_path / "gpu_suite_wheels"
    manifest = wheel_parts.split([wheel], wheels, part_bytes=20_000)
    second = wheels / manifest["parts"][1]["name"]
    content = second.read_bytes()
    second.unlink()
    env = {**os.environ, "MAEFAST_SUITE_CACHE": str(tmp_path / "cache")}
    for out, status in ((tmp_path / "missing", f"skipped (missing: {second.name})"),
                        (tmp_path / "whole", f"skipped (dry run: every part is in {wheels}, not installed)")):
        run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--rest", "--steps",
                              "dali,tests_loader", "--wheels", str(wheels), "--cache-from", str(tmp_path / "none"),
                              str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        steps = {line.split("\t")[0]: line.split("\t") for line in (out / "steps_rest.tsv").read_text().splitlines()}
        assert steps["dali"][1:] == ["60", "0", "0", status]
        assert steps["tests_loader"][4] == "ok" and "on_cuda" in (out / "tests_loader.log").read_text()
        assert list(steps) == ["step", "dali", "tests_loader", "archive"]
        second.write_bytes(content)


def test_train_e2e_measures_the_random_tensor_baseline_when_no_record_has_it(tmp_path):
    """The loader's GPU call starts on an empty OUT: bench_train_e2e then measures bench_train's figure itself
    (the same step on random crops) and records it as its baseline; a bench_train record, when there, is read."""
    from benchmarks import bench_train_e2e
    records = tmp_path / "records.jsonl"
    rec = common.Recorder("train_e2e", torch.device("cpu"), str(records))
    assert bench_train_e2e.random_tensor_figure(records, jobs.QUICK_TRAIN_MODEL, "maefast_eager") is None
    value = bench_train_e2e.measure_random_tensor_figure(rec, jobs.QUICK_TRAIN_MODEL, "maefast_eager", 4,
                                                         torch.device("cpu"), reps=1)
    record = json.loads(records.read_text().splitlines()[-1])
    assert value > 0 and record["kind"] == "baseline" and record["value"] == round(value, 2)
    assert record["case"] == jobs.QUICK_TRAIN_MODEL and record["backend"] == "maefast_eager"
    records.write_text(records.read_text() + json.dumps({"bench": "train", "case": jobs.QUICK_TRAIN_MODEL,
                                                         "backend": "maefast_eager", "value": 12.5}) + "\n")
    assert bench_train_e2e.random_tensor_figure(records, jobs.QUICK_TRAIN_MODEL, "maefast_eager") == 12.5
