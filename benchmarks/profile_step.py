"""Where the time of a step goes: the top GPU kernels and the shares of GEMM, attention, maefast's own Triton
kernels, and elementwise / copy / norm work, for one training step and one embedding step.

    python -m benchmarks.profile_step                 # GPU: MAE ViT-L/8 training (batch 64), ViT-L/8 embedding
                                                      #      (batch 128), bf16, tuned and compiled as a user gets them
    python -m benchmarks.profile_step --eager         # the same, not compiled
    python -m benchmarks.profile_step --quick         # CPU smoke run: debug models, CPU op self-times

Each job is warmed up (compilation and autotuning happen there), then `--steps` steps run under
torch.profiler. Every kernel launch is put in one group by its name and the ops that launched it:
  gemm                   cuBLAS / CUTLASS / nvjet kernels, inductor's matmul templates, convolutions
  attention              any attention kernel: SDPA's (cuDNN, flash, efficient, math) and maefast's Triton one
  maefast                maefast's other kernels (tokenize, unshuffle, mae_loss) and what their ops launch
  elementwise_copy_norm  everything else that computes: inductor's fused pointwise / reduction kernels, ATen
                         elementwise, casts, copies, LayerNorms, reductions, the optimizer's foreach updates
  other                  host <-> device transfers, communication
and tagged, within any group, `cast` (dtype conversion), `copy` (same-dtype copies: clone, contiguous, cat),
`norm` and `optimizer` (the casts and copies are a target of the fused block). On a CPU the rows are the ops'
self times. Printed as a readable table per job, then as JSON records (`--json-out` appends them to a file).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import maefast
from benchmarks import common, jobs
from maefast.errors import installed

GROUPS = ("gemm", "attention", "maefast", "elementwise_copy_norm", "other")
TAGS = ("cast", "copy", "norm", "optimizer")
GEMM_NAMES = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "splitkreduce", "wgmma", "implicit_convolve")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::addmv",
            "aten::_scaled_mm", "aten::convolution", "aten::_convolution", "aten::cudnn_convolution",
            "aten::convolution_backward", "aten::mkldnn_convolution")
ATTENTION_NAMES = ("fmha", "flash", "attention", "attn", "sdpa")
COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::stack")
NORM = re.compile(r"(layer|instance|group|batch|rms)_?norm")
# job -> (model, --quick model, batch, --quick batch, how maefast sets it up: {variant: step}, setup record)
JOBS = {"train": ("mae_vit_large_patch8_256", jobs.QUICK_TRAIN_MODEL, 64, 16, jobs.maefast_training),
        "embed": ("vit_large_patch8_256", jobs.QUICK_EMBED_MODEL, 128, 32, jobs.maefast_embedding)}


def maefast_kernel_names() -> dict[str, str]:
    """Name of each @triton.jit function of maefast.kernels (the name a profiler shows) -> its kernel module."""
    if not installed("triton"):
        return {}  # without Triton no maefast kernel can run
    from triton.runtime import JITFunction

    import maefast.kernels
    names = {}
    for info in pkgutil.iter_modules(maefast.kernels.__path__):
        module = importlib.import_module(f"maefast.kernels.{info.name}")
        for value in vars(module).values():
            if isinstance(value, JITFunction) and value.fn.__module__ == module.__name__:
                names[value.fn.__name__] = info.name
    return names


def classify(kernel: str, ops: list[str], maefast_kernels: dict[str, str]) -> tuple[str, set[str]]:
    """(group, tags) of one kernel launch: `kernel` its name (on a CPU the op's), `ops` the ops it ran under,
    innermost first, `maefast_kernels` from maefast_kernel_names()."""
    name, context = kernel.lower(), [op.lower() for op in ops]
    tags = set()
    if "_to_copy" in name or "bfloat16_copy" in name or "float8_copy" in name or "aten::_to_copy" in context:
        tags.add("cast")
    elif "copy" in name or "clone" in name or "memcpy dtod" in name or (context and context[0] in COPY_OPS):
        tags.add("copy")
    if NORM.search(name) or any(NORM.search(op) for op in context):
        tags.add("norm")
    if "multi_tensor_apply" in name or "foreach" in name or any(op.startswith("optimizer.step") for op in context):
        tags.add("optimizer")
    if kernel in maefast_kernels:
        return ("attention" if "attention" in maefast_kernels[kernel] else "maefast"), tags
    own = next((op for op in context if op.startswith("maefast::")), None)  # what maefast's ops launch
    if own is not None:
        return ("attention" if "attention" in own else "maefast"), tags
    if name.startswith("triton_"):  # inductor: triton_{poi,per,red,for}_fused_* compute, triton_tem_* templates
        if name.startswith("triton_tem"):
            return ("attention" if "attention" in name else "gemm"), tags
        return "elementwise_copy_norm", tags
    if any(word in name for word in ATTENTION_NAMES) or any(
            word in op for op in context for word in ("attention", "sdpa")):
        return "attention", tags
    if any(word in name for word in GEMM_NAMES) or (context and context[0] in GEMM_OPS):
        return "gemm", tags
    if "memcpy htod" in name or "memcpy dtoh" in name or "nccl" in name:
        return "other", tags
    return "elementwise_copy_norm", tags


@dataclass
class Breakdown:
    """Microseconds per group, per tag and per kernel name (with launch counts) over the profiled steps."""
    total_us: float = 0.0
    groups: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    group_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tags: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    tag_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kernels: dict[str, list] = field(default_factory=dict)  # name -> [us, count, group]

    def add(self, kernel: str, us: float, ops: list[str], maefast_kernels: dict[str, str]) -> None:
        group, tags = classify(kernel, ops, maefast_kernels)
        self.total_us += us
        self.groups[group] += us
        self.group_counts[group] += 1
        for tag in tags:
            self.tags[tag] += us
            self.tag_counts[tag] += 1
        row = self.kernels.setdefault(kernel, [0.0, 0, group])
        row[0] += us
        row[1] += 1


def op_stack(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def breakdown(events, device: torch.device, maefast_kernels: dict[str, str]) -> Breakdown:
    """GPU: every kernel launch, attributed to the ops that launched it (kernels the profiler could not
    attribute are classified by name alone). CPU: every op's self time."""
    result = Breakdown()
    if device.type != "cuda":
        for event in events:
            if event.device_type == DeviceType.CPU and event.self_cpu_time_total > 0:
                result.add(event.name, event.self_cpu_time_total, op_stack(event), maefast_kernels)
        return result
    attributed: dict[str, float] = defaultdict(float)
    for event in events:
        for kernel in event.kernels:
            result.add(kernel.name, kernel.duration, op_stack(event), maefast_kernels)
            attributed[kernel.name] += kernel.duration
    on_device: dict[str, float] = defaultdict(float)
    for event in events:
        if event.device_type == DeviceType.CUDA:
            on_device[event.name] += event.time_range.elapsed_us()
    for name, us in on_device.items():
        if us - attributed[name] > 1.0:
            result.add(name, us - attributed[name], [], maefast_kernels)
    return result


def profile_steps(step, device: torch.device, steps: int):
    step()
    step()  # warm-up: compilation, autotuning, allocator
    common.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        common.synchronize(device)
    return prof.events()


def report(rec: common.Recorder, job: str, result: Breakdown, steps: int, top: int, unit: str) -> None:
    total = max(result.total_us, 1e-9)

    def ms(us: float) -> float:
        return round(us / 1e3 / steps, 3)

    print(f"\n{job}: {ms(result.total_us)} ms of {unit} per step ({steps} steps profiled)")
    for group in GROUPS:
        print(f"  {group:24s} {ms(result.groups[group]):10.3f} ms  {result.groups[group] / total:6.1%}  "
              f"{result.group_counts[group] // steps:6d} launches/step")
    for tag in TAGS:
        print(f"  [{tag}]{'':{21 - len(tag)}s} {ms(result.tags[tag]):10.3f} ms  {result.tags[tag] / total:6.1%}  "
              f"{result.tag_counts[tag] // steps:6d} launches/step")
    ranked = sorted(result.kernels.items(), key=lambda item: -item[1][0])[:top]
    print(f"  top {len(ranked)}:")
    for name, (us, count, group) in ranked:
        print(f"  {ms(us):10.3f} ms  {us / total:6.1%}  x{count // steps:<5d} {group:22s} {name[:110]}")
    for group in GROUPS:
        rec.emit(kind="group", case=job, backend=group, ms=ms(result.groups[group]),
                 share=round(result.groups[group] / total, 4), launches=result.group_counts[group] // steps)
    for tag in TAGS:
        rec.emit(kind="tag", case=job, backend=tag, ms=ms(result.tags[tag]), share=round(result.tags[tag] / total, 4),
                 launches=result.tag_counts[tag] // steps)
    for rank, (name, (us, count, group)) in enumerate(ranked, 1):
        rec.emit(kind="kernel", case=job, rank=rank, backend=group, kernel=name[:200], ms=ms(us),
                 share=round(us / total, 4), launches=count // steps)
    shares = {group: round(result.groups[group] / total, 4) for group in GROUPS}
    rec.emit(kind="summary", case=job, value=shares["elementwise_copy_norm"], unit="elementwise+copy+norm share",
             ms=ms(result.total_us), shares=shares, cast_share=round(result.tags["cast"] / total, 4),
             copy_share=round(result.tags["copy"] / total, 4), time_of=unit)


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--eager", action="store_true", help="profile maefast eager instead of compiled")
    args_parser.add_argument("--steps", type=int, default=2, help="profiled steps per job")
    args_parser.add_argument("--top", type=int, default=15, help="kernels listed per job")
    args_parser.add_argument("--channels", type=int, default=6)
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    rec = common.Recorder("profile", device, args.json_out)
    common.stop_on_sigterm()
    variant = "maefast_eager" if args.eager else "maefast"
    unit = "GPU kernel time" if device.type == "cuda" else "CPU op self time"
    kernels = maefast_kernel_names()
    try:
        for job, (name, quick_name, batch, quick_batch, setup) in JOBS.items():
            name, batch = (quick_name, quick_batch) if args.quick else (name, batch)
            torch.manual_seed(0)
            model = maefast.create_model(name, in_chans=args.channels).to(device).train(job == "train")
            size = getattr(model.config, "encoder", model.config).img_size
            steps, _ = setup(model, jobs.random_crops(batch, args.channels, size, device))
            events = profile_steps(steps[variant], device, args.steps)
            report(rec, f"{job} {name} b{batch} {variant}", breakdown(events, device, kernels), args.steps, args.top,
                   unit)
            del model, steps, events
    except common.TimeLimit as stop:
        rec.emit(kind="note", skipped=f"{stop}; the jobs not reported above were not profiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
