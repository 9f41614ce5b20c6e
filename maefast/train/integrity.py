"""What a training checkpoint must be to resume from, checked whole before any of it is applied.

- Every file is the one written: a SHA-256 digest per file is written at save (digests.json) and verified at
  resume (a checkpoint of an older maefast, without digests, is read with a warning).
- The training state has the structure maefast writes (step, counters, loader position, RNG states of every
  rank, optimizer state), checked field by field, so a hand-edited train_state.json is named, not a
  TypeError deep inside the restore.
- The weights are the model's: every tensor the model of the checkpoint's config.json has, with its shape
  and dtype, and nothing else (built on the meta device, no memory allocated); the optimizer's state belongs
  to those parameters, with their shapes.
- Every floating-point value (weights and optimizer state) is finite.

A check that fails raises UserInputError naming the file and what was wrong; the resume then falls back to the
previous checkpoint with a warning (maefast.train.state.newest_intact_checkpoint).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from maefast.errors import UserInputError
from maefast.fields import matches
from maefast.io import check_finite, file_sha256, read_json, write_json_atomic
from maefast.models.registry import create_model

DIGESTS_FILE = "digests.json"


def write_digests(directory: Path) -> None:
    """digests.json: the SHA-256 of every other file of a checkpoint directory, written last."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != DIGESTS_FILE)
    write_json_atomic(directory / DIGESTS_FILE, {name: file_sha256(directory / name) for name in names})


def verify_digests(directory: Path, required: tuple[str, ...]) -> None:
    """UserInputError naming the first file whose digest differs from the one written at save; a checkpoint
    without digests.json (older maefast) is accepted with a warning."""
    path = directory / DIGESTS_FILE
    if not path.exists():
        warnings.warn(f"resume: {directory.name} has no {DIGESTS_FILE} (written by an older maefast): its files "
                      f"are checked, not verified against digests", stacklevel=3)
        return
    digests = read_json(path)
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise UserInputError(f"{path}: expected a mapping of file names to SHA-256 digests")
    unlisted = [name for name in required if name not in digests]
    if unlisted:
        raise UserInputError(f"{path}: lists no digest of {unlisted}")
    for name, digest in sorted(digests.items()):
        if "/" in name or name in (".", ".."):
            raise UserInputError(f"{path}: {name!r} is not a file of the checkpoint")
        file = directory / name
        if not file.is_file():
            raise UserInputError(f"{file}: missing (written at save, listed in {DIGESTS_FILE})")
        if file_sha256(file) != digest:
            raise UserInputError(f"{file}: its SHA-256 differs from the one written at save ({DIGESTS_FILE}): the "
                                 f"file was changed or damaged")


def _count(value) -> bool:
    return matches(value, int) and value >= 0


def check_train_state(state, meta, path: Path) -> None:
    """UserInputError naming the first field of the training state (train_state.json) that is not what maefast
    writes."""
    def fail(what: str):
        raise UserInputError(f"{path}: {what}; not a training state that maefast wrote")

    if not isinstance(state, dict):
        fail(f"a {type(state).__name__}, expected a mapping")
    if not isinstance(meta, dict) or not _count(meta.get("step")):
        fail(f"meta.json's step is {meta.get('step') if isinstance(meta, dict) else meta!r}")
    for key in ("step", "crops_seen"):
        if not _count(state.get(key)):
            fail(f"{key} is {state.get(key)!r}, expected a whole number >= 0")
    if state["step"] != meta["step"]:
        fail(f"step {state['step']} differs from meta.json's step {meta['step']}")
    if not (matches(state.get("total_flops"), float) or _count(state.get("total_flops"))) or state["total_flops"] < 0:
        fail(f"total_flops is {state.get('total_flops')!r}, expected a number >= 0")
    loader = state.get("loader")
    if not isinstance(loader, dict):
        fail(f"loader is {loader!r}, expected the loader's position")
    for key in ("epoch", "step"):
        if not _count(loader.get(key)):
            fail(f"loader.{key} is {loader.get(key)!r}, expected a whole number >= 0")
    for key in ("world_size", "batch_size", "num_images"):
        if not (matches(loader.get(key), int) and loader[key] >= 1):
            fail(f"loader.{key} is {loader.get(key)!r}, expected a whole number >= 1")
    if not (loader.get("seed") is None or _count(loader.get("seed"))):
        fail(f"loader.seed is {loader.get('seed')!r}")
    if not (isinstance(loader.get("skipped"), list) and all(isinstance(s, dict) for s in loader["skipped"])):
        fail("loader.skipped is not a list of skipped images")
    rng = state.get("rng")
    if not (isinstance(rng, list) and rng):
        fail("rng is not a list of RNG states (one per rank)")
    for rank, states in enumerate(rng):
        problem = _rng_problem(states)
        if problem:
            fail(f"rng[{rank}]: {problem}")
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and optimizer["param_groups"]
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])):
        fail("optimizer is not an optimizer state (state, param_groups with params)")


def _rng_problem(states) -> str | None:
    if not isinstance(states, dict):
        return "not a mapping of generators"
    generator = states.get("torch")
    if not (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8 and generator.dim() == 1):
        return "torch is not a torch generator state"
    numpy_state = states.get("numpy")
    if not (isinstance(numpy_state, tuple) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
            and isinstance(numpy_state[1], np.ndarray) and numpy_state[1].shape == (624,)
            and all(matches(v, int) for v in numpy_state[2:4]) and matches(numpy_state[4], float)):
        return "numpy is not a numpy MT19937 state"
    python = states.get("python")
    if not (isinstance(python, tuple) and len(python) == 3 and matches(python[0], int)
            and isinstance(python[1], tuple) and len(python[1]) == 625 and all(matches(v, int) for v in python[1])
            and (python[2] is None or matches(python[2], float))):
        return "python is not a random module state"
    cuda = states.get("cuda")
    if cuda is not None and not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                              for t in cuda)):
        return "cuda is not a list of CUDA generator states"
    return None


def check_weights(model_state: dict, model_config, meta: dict, directory: Path, model_file: str) -> dict:
    """The model's expected tensors (from the checkpoint's config.json, built on the meta device) against the
    weights file: every tensor present with its shape and dtype, nothing else, all finite. Returns the
    expected state (meta tensors) for the optimizer check."""
    config_path, weights = directory / "config.json", directory / model_file
    if not (isinstance(model_config, dict) and isinstance(model_config.get("model"), str)
            and isinstance(model_config.get("config"), dict)):
        raise UserInputError(f"{config_path}: not a maefast model config (model, config)")
    trained = ((meta.get("config") or {}).get("model") or {}).get("name") if isinstance(meta, dict) else None
    if trained != model_config["model"]:
        raise UserInputError(f"{config_path}: names model {model_config['model']!r}, meta.json {trained!r}")
    try:
        with torch.device("meta"):
            expected = create_model(model_config["model"], **model_config["config"]).state_dict()
    except (UserInputError, TypeError, ValueError) as error:
        raise UserInputError(f"{config_path}: does not build its model ({type(error).__name__}: {error})") from None
    missing = sorted(set(expected) - set(model_state))
    unexpected = sorted(set(model_state) - set(expected))
    if missing or unexpected:
        raise UserInputError(f"{weights}: not the weights of {model_config['model']} (config.json): "
                             f"{_listed('missing', missing)}{'; ' if missing and unexpected else ''}"
                             f"{_listed('unexpected', unexpected)}")
    wrong = [f"{k} {tuple(v.shape)} {v.dtype} (expected {tuple(expected[k].shape)} {expected[k].dtype})"
             for k, v in sorted(model_state.items())
             if tuple(v.shape) != tuple(expected[k].shape) or v.dtype != expected[k].dtype]
    if wrong:
        raise UserInputError(f"{weights}: tensors of another shape or dtype than the model's: {', '.join(wrong[:5])}")
    check_finite(model_state, weights)
    return expected


def check_optimizer(optimizer: dict, expected: dict, path: Path) -> None:
    """The optimizer's state belongs to the model's parameters, with their shapes, and is finite."""
    names = set(expected)
    for group in optimizer["param_groups"]:
        strangers = [p for p in group["params"] if p not in names]
        if strangers:
            raise UserInputError(f"{path}: the optimizer's parameter groups name {strangers[:5]}, which the model "
                                 f"does not have")
    tensors = {}
    for name, state in optimizer["state"].items():
        if name not in names or not isinstance(state, dict):
            raise UserInputError(f"{path}: optimizer state of {name!r}, which the model does not have")
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{key}"] = value
                if value.dim() > 0 and tuple(value.shape) != tuple(expected[name].shape):
                    raise UserInputError(f"{path}: optimizer state {name}.{key} has shape {tuple(value.shape)}, the "
                                         f"parameter {tuple(expected[name].shape)}")
    check_finite(tensors, path)


def _listed(kind: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{kind} {names[:5]}{more}"
