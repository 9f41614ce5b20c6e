"""Compiles every Triton kernel of maefast for Hopper (sm_90, the H100 / H200) on a machine without a GPU.

    python -m tests.ops.sm90_check [--json FILE] [--workers N]      (from the repository root)

Each fused op's Triton path is called on small CPU tensors at every geometry the registry's models produce
(patch 8 and 16, 1 to 11 channels, plain and channel-agnostic, encoder and decoder widths and heads, 16-bit
and fp32) inside `recording_launches()`, so every launch a model makes is recorded, not run. Every recorded
launch is then compiled at every candidate configuration it may be launched with (the autotune list, whose
first entry is the fixed choice), once per distinct Triton specialization. Reported per compile: shared
memory (the H100 / H200 limit per block is 232,448 bytes) and whether the kernel's dots became Hopper
`wgmma` instructions. A dot on 16-bit or tf32 operands must; a dot on fp32 operands at full (ieee) precision
cannot (wgmma has no such mode), so those are checked for shared memory only. The default configurations
(the first of each launch: what runs with MAEFAST_AUTOTUNE=0, and the autotuner's first candidate) also go
through ptxas, Triton's last stage, with the ptxas Triton runs on the GPU: their registers, stack frame and
spill stores / loads are reported, and a default configuration that spills is a problem (a spill is a trip to
local memory in the inner loop; the autotuner may still time spilling alternatives), except the known ones in
KNOWN_SPILLS, which are reported apart (the figures of 2026-12 are in each reason).

Must run without TRITON_INTERPRET=1 (the kernels have to be real triton.jit functions): tests/ops/
test_sm90_compile.py runs it in a subprocess with a clean environment.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

import maefast
from maefast.io import atomic_path
from maefast.kernels._common import recording_launches
from maefast.models.families import family_of
from maefast.models.registry import input_config, list_models

HOPPER = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 232_448
CHANNEL_COUNTS = range(1, 12)
DTYPES = (torch.bfloat16, torch.float32)


def registry_geometries() -> dict[str, set]:
    """What the registry's models feed the kernels, as sets of tuples per op."""
    encoders, decoders, losses = set(), set(), set()
    for name in list_models():
        with torch.device("meta"):
            model = maefast.create_model(name, **family_of(name).build_options)
        config = input_config(model)
        patch, img = config.patch_size, config.img_size
        agnostic = getattr(config, "channel_agnostic", False)
        if hasattr(config, "embed_dim"):  # a ViT encoder (also inside MAEs and classifiers)
            for channels in ([1, config.max_in_chans] if agnostic else CHANNEL_COUNTS):
                encoders.add((img, patch, channels, config.embed_dim, config.num_heads, agnostic))
        if hasattr(model, "decoder") and hasattr(model.config, "decoder_embed_dim"):
            mae = model.config
            decoders.add((img, patch, mae.decoder_embed_dim, mae.decoder_num_heads,
                          mae.cross_attention_heads if agnostic else 0, agnostic))
        for channels in ([1] if agnostic else CHANNEL_COUNTS):  # channels inside one predicted patch vector
            losses.add((patch, channels))
    return {"encoder": encoders, "decoder": decoders, "loss": losses}


def empty(*shape, dtype=torch.float32) -> torch.Tensor:
    """Nothing runs while launches are recorded, so no tensor needs values."""
    return torch.empty(shape, dtype=dtype)


def heads_view(batch: int, length: int, heads: int, head_dim: int, dtype) -> torch.Tensor:
    """(B, H, N, d) as the models make it: a view of a (B, N, H * d) projection."""
    return empty(batch, length, heads * head_dim, dtype=dtype).view(batch, length, heads, head_dim).transpose(1, 2)


def record_attention(length: int, heads: int, head_dim: int, dtype, qk_norm: bool, kv_length: int | None = None):
    ops = torch.ops.maefast
    q = heads_view(2, length, heads, head_dim, dtype)
    k, v = (heads_view(2, kv_length or length, heads, head_dim, dtype) for _ in range(2))
    scale = head_dim ** -0.5
    if qk_norm:
        norm = [empty(head_dim)] * 4
        out, lse = ops.flash_attention_qknorm(q, k, v, *norm, 1e-6, scale)
        ops.flash_attention_qknorm_backward(torch.empty_like(out), q, k, v, out, lse, *norm, 1e-6, scale)
    else:
        out, lse = ops.flash_attention(q, k, v, scale)
        ops.flash_attention_backward(torch.empty_like(out), q, k, v, out, lse, scale)


def record_encoder(img: int, patch: int, channels: int, dim: int, heads: int, agnostic: bool, dtype) -> None:
    ops = torch.ops.maefast
    pixels = empty(2, channels, img, img, dtype=torch.uint16)
    tokens = (img // patch) ** 2 * (channels if agnostic else 1)
    kd = patch * patch * (1 if agnostic else channels)
    weight, bias, pos = empty(dim, kd), empty(dim), empty(tokens, dim)
    for kept in (tokens // 4, tokens):  # training (mask 0.75) and embedding (every token)
        keep_idx = torch.randperm(tokens)[:kept].expand(2, kept).contiguous()
        out, mean, rstd = ops.tokenize(pixels, keep_idx, weight.view(dim, -1, patch, patch), bias, pos, agnostic,
                                       dtype, "triton")
        ops.tokenize_backward(torch.empty_like(out), pixels, keep_idx, mean, rstd, dim, patch, agnostic, "triton")
        record_attention(kept + 1, heads, dim // heads, dtype, qk_norm=True)
    masked_idx = torch.randperm(tokens)[: tokens - tokens // 4].expand(2, -1).contiguous()
    ops.masked_targets(pixels, masked_idx, patch, agnostic, "triton")


def record_decoder(img: int, patch: int, dim: int, heads: int, cross_heads: int, agnostic: bool, dtype) -> None:
    ops = torch.ops.maefast
    tokens = (img // patch) ** 2 * (2 if agnostic else 1)
    kept = tokens // 4
    keep_idx = torch.randperm(tokens)[:kept].expand(2, kept).contiguous()
    visible = empty(2, kept, dim, dtype=dtype)
    full = ops.unshuffle(visible, keep_idx, empty(dim), empty(tokens, dim), "triton")
    ops.unshuffle_backward(torch.empty_like(full), keep_idx, "triton")
    per_channel = tokens // 2 if agnostic else tokens + 1
    record_attention(per_channel, heads, dim // heads, dtype, qk_norm=False)
    if cross_heads:
        record_attention(tokens, cross_heads, dim // cross_heads, dtype, qk_norm=False)


def record_loss(patch: int, channels: int, dtype) -> None:
    ops = torch.ops.maefast
    pred = empty(2, 48, patch * patch * channels, dtype=dtype)
    target = empty(2, 48, patch * patch * channels)
    for norm in (False, True):
        ops.mae_loss(pred, target, channels, norm, 0.01)
        ops.mae_loss_backward(pred, target, torch.ones(2), channels, norm)


def recorded_launches() -> list:
    geometries = registry_geometries()
    with recording_launches() as launches:
        for dtype in DTYPES:
            for geometry in sorted(geometries["encoder"]):
                record_encoder(*geometry, dtype)
            for geometry in sorted(geometries["decoder"]):
                record_decoder(*geometry, dtype)
            for geometry in sorted(geometries["loss"]):
                record_loss(*geometry, dtype)
    return launches


def portable(value):
    """A launch argument a worker process can receive: tensors become triton's MockTensor (dtype only; torch
    allocations are 16-byte aligned, as the mock's null pointer is, so the specialization is the same)."""
    return MockTensor(value.dtype) if isinstance(value, torch.Tensor) else value


def compile_jobs(launches: list) -> dict:
    """One compile per distinct (kernel, tensor dtypes, constexprs, configuration) -> (kernel's module and
    name, args, kwargs, whether it is a default configuration: the first of some launch). The runtime integers
    (sizes, strides) only decide Triton's alignment and equal-to-one specializations, which change neither
    shared memory nor the choice of wgmma, so the first launch of each kind stands for the others."""
    jobs = {}
    for spec in launches:
        dtypes = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in spec.args)
        for index, candidate in enumerate(spec.configs):
            launch_config = candidate.all_kwargs()
            key = (spec.kernel_name, dtypes, str(sorted((k, str(v)) for k, v in spec.constexprs.items())),
                   str(sorted(launch_config.items())))
            default = index == 0 or (key in jobs and jobs[key][-1])
            jobs[key] = ((spec.kernel.fn.__module__, spec.kernel.fn.__name__),
                         tuple(portable(a) for a in spec.args), spec.constexprs, launch_config, default)
    return jobs


def compile_to_ptx(src: ASTSource, options) -> tuple[dict, dict]:
    """Triton's compile pipeline for sm_90 up to PTX: (metadata, {stage: text}). The last stage, ptxas to a
    cubin, is left out here (ptxas_resources runs it for the default configurations): it takes most of the
    time and changes neither the shared memory (fixed when the IR is lowered to LLVM) nor the instructions the
    PTX names."""
    backend = make_backend(HOPPER)
    options = backend.parse_options(dict(options.__dict__, **src.parse_options()))
    metadata = {"target": HOPPER, **options.__dict__}
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    codegen = backend.get_codegen_implementation(options)
    module = src.make_ir(HOPPER, options, codegen, backend.get_module_map(), context)
    text = {}
    for stage, lower in stages.items():
        if stage == "cubin":
            break
        module = lower(module, metadata)
        text[stage] = module if isinstance(module, str) else str(module)
    return metadata, text


PTXAS_LINE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_resources(ptx: str, arch: str = "sm_90a") -> dict:
    """Registers, stack frame and spill bytes of a kernel's PTX, from `ptxas -v` (the ptxas Triton itself runs,
    with the options of Triton's cubin stage that change code generation)."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([get_ptxas(90).path, "-lineinfo", "-v", f"--gpu-name={arch}", str(source), "-o",
                                 str(source.with_suffix(".cubin"))], capture_output=True, text=True, check=True)
    log = result.stderr + result.stdout
    frame, stores, loads = map(int, PTXAS_LINE.search(log).groups())
    return {"registers": int(REGISTERS.search(log).group(1)), "stack_bytes": frame, "spill_store_bytes": stores,
            "spill_load_bytes": loads}


def cache_path(kernel, args, kwargs, default: bool) -> Path:
    """Where the result of one compile is kept: it depends only on the kernel's source (with the jit functions
    it calls), the Triton version, the argument dtypes, the constexprs / configuration and whether ptxas ran."""
    key = json.dumps([triton.__version__, kernel.cache_key, [str(getattr(a, "dtype", type(a).__name__)) for a in args],
                      sorted((k, str(v)) for k, v in kwargs.items()), "ptxas" if default else "ptx"])
    root = Path(os.environ.get("MAEFAST_CACHE", Path.home() / ".cache" / "maefast")) / "sm90_check"
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def compile_one(job) -> dict:
    (module, name), args, constexprs, launch_config, default = job
    kernel = getattr(importlib.import_module(module), name)
    kwargs = {**constexprs, **launch_config}
    cached = cache_path(kernel, args, kwargs, default)
    if cached.exists():
        return json.loads(cached.read_text())
    backend = make_backend(HOPPER)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constant_paths, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    metadata, text = compile_to_ptx(ASTSource(kernel, signature, constant_paths, attrs), options)
    dots = re.findall(r"tt\.dot .*", text["ttir"])
    tensor_core_dots = [d for d in dots if not ("xf32>" in d and "tf32" not in d)]
    result = {"kernel": name, "config": launch_config, "shared": metadata["shared"],
              "dots": len(dots), "tensor_core_dots": len(tensor_core_dots), "wgmma": "wgmma" in text["ptx"],
              "constexprs": {k: str(v) for k, v in constexprs.items()},
              "dtypes": [str(getattr(a, "dtype", type(a).__name__)) for a in args], "default": default}
    if default:
        result.update(ptxas_resources(text["ptx"]))
    with atomic_path(cached) as temporary:
        temporary.write_text(json.dumps(result))
    return result


# Default configurations known to spill, and why they are not (yet) a failure. Every other spill is one.
KNOWN_SPILLS = {
    "fp32 attention": "fp32 operands (UPCAST) run the dots at ieee precision without tensor cores: the path of "
                      "fp32 runs that force the Triton kernel, never picked by tuning (16-bit only); every tile "
                      "from 32x32 up spills at head dim 64 (0.5-20 KB)",
    "mae_loss": "the tf32x3 DFT GEMMs hold (64 x 256) fp32 DFT blocks split in three at 16 x 16 patches (about 5 KB "
                "of spills; at 8 x 8 patches up to 1 KB with NORM); tiles that do not spill lose wgmma. A "
                "restructured kernel is open work; the loss is about 2% of a training step",
}


def known_spill(result: dict) -> str | None:
    """The KNOWN_SPILLS entry a spilling default configuration falls under, or None."""
    if result["kernel"].startswith("_attention") and result["constexprs"].get("UPCAST") == "True":
        return "fp32 attention"
    if result["kernel"] == "_mae_loss_kernel":
        return "mae_loss"
    return None


def spills(result: dict) -> bool:
    return bool(result.get("default") and (result["spill_store_bytes"] or result["spill_load_bytes"]))


def check(results: list) -> list[str]:
    problems = []
    for r in results:
        where = f"{r['kernel']} {r['config']} {r['constexprs']}"
        if r["shared"] > SHARED_MEMORY_LIMIT:
            problems.append(f"{where}: {r['shared']} bytes of shared memory > {SHARED_MEMORY_LIMIT}")
        if r["tensor_core_dots"] and not r["wgmma"]:
            problems.append(f"{where}: {r['tensor_core_dots']} tensor-core dot(s) but no wgmma in the PTX")
        if spills(r) and known_spill(r) is None:
            problems.append(f"{where} {r['dtypes']}: a default configuration spills ({r['registers']} registers, "
                            f"{r['stack_bytes']} B stack, {r['spill_store_bytes']} B spill stores, "
                            f"{r['spill_load_bytes']} B spill loads)")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every compile's result to this file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("sm90_check: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    jobs = list(compile_jobs(recorded_launches()).values())
    recorded = time.perf_counter() - start
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(compile_one, jobs))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    problems = check(results)
    kernels = sorted({r["kernel"] for r in results})
    defaults = [r for r in results if r["default"]]
    print(f"sm90_check: {len(results)} compiles of {len(kernels)} kernels ({', '.join(kernels)}); "
          f"max shared memory {max(r['shared'] for r in results)} bytes; {len(defaults)} default configurations "
          f"through ptxas, at most {max(r['registers'] for r in defaults)} registers; "
          f"{sum(r['wgmma'] for r in results)} with wgmma; {len(problems)} problem(s); recording {recorded:.0f} s, "
          f"compiling {time.perf_counter() - start - recorded:.0f} s")
    for problem in problems:
        print("  " + problem)
    known = sorted({known_spill(r) for r in results if spills(r) and known_spill(r)})
    for name in known:
        worst = max((r for r in results if spills(r) and known_spill(r) == name), key=lambda r: r["spill_load_bytes"])
        print(f"  known spills ({name}; worst {worst['kernel']} {worst['config']}: {worst['spill_load_bytes']} B "
              f"spill loads): {KNOWN_SPILLS[name]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
