"""Resuming a run: the config and data a checkpoint was trained with against the current ones, and the
history of the configs a run directory has used.

Every key of the effective config is compared (maefast.records flattens it), so a key added to the config
later is covered without being listed here (a checkpoint written before a key existed has its default). A
difference is refused, naming each key (old -> new), unless the resume allows config changes; even then a
change of what the checkpoint's tensors depend on (the model, the optimizer) or of the data is refused.

Two keys may change without --allow-config-change, each judged by its own rule: data.path (a moved data set:
the data's fingerprint decides, check_data) and run.max_steps (extending or shortening a run: the learning-rate
schedule continues as maefast.train.optim.rescheduled says, and the trainer prints it).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from maefast.data.identity import compare_fingerprints
from maefast.errors import UserInputError
from maefast.io import read_json, write_json_atomic
from maefast.records import changes, describe_changes
from maefast.train.config import TrainConfig

# config keys (prefixes) the stored weights and optimizer state depend on: a resume cannot change them
FIXED_ON_RESUME = ("model.", "optim.name")
# config keys a resume may change without --allow-config-change (see the module docstring)
RESUME_MAY_CHANGE = ("data.path", "run.max_steps")
HISTORY_FILE = "config_history.json"


def check_config(meta: dict, config: TrainConfig, recipe: str | None, allow_change: bool, checkpoint: Path) -> dict:
    """The config differences a resume from `checkpoint` applies ({} when none); UserInputError when the
    difference is not allowed."""
    differences = changes(recorded_config(meta["config"]), config.to_dict())
    if not differences:
        return {}
    recipe_note = f" (recipe {meta.get('recipe')!r} -> {recipe!r})" if meta.get("recipe") != recipe else ""
    fixed = {key: change for key, change in differences.items() if key.startswith(FIXED_ON_RESUME)}
    if fixed:
        raise UserInputError(f"--resume: {checkpoint} was trained with another model or optimizer{recipe_note}, "
                             f"which a resumed run cannot change: {describe_changes(fixed)}; start a new run "
                             f"in another --out")
    needs_permission = {key: change for key, change in differences.items() if key not in RESUME_MAY_CHANGE}
    if needs_permission and not allow_change:
        differences = needs_permission
        raise UserInputError(f"--resume: the config differs from the one {checkpoint} was trained with"
                             f"{recipe_note}: {describe_changes(differences)}; resume with the same settings, or "
                             f"pass --allow-config-change to continue with the new values")
    return differences


def recorded_config(config: dict) -> dict:
    """A checkpoint's config in today's keys: a key added since it was written has its default (data.synthetic:
    a run of that time without data.path trained on the synthetic screen)."""
    upgraded = merged(TrainConfig().to_dict(), config)
    if "synthetic" not in config.get("data", {}):
        upgraded["data"]["synthetic"] = not config.get("data", {}).get("path")
    return upgraded


def merged(defaults: dict, values: dict) -> dict:
    """`defaults` with `values` over them, section by section."""
    return {**defaults, **{key: merged(defaults[key], value) if isinstance(defaults.get(key), dict)
                           and isinstance(value, dict) else value for key, value in values.items()}}


def check_data(meta: dict, fingerprint: dict, checkpoint: Path) -> None:
    """Refuses data other than the checkpoint's (its table or its files' content), even when config changes are
    allowed; a checkpoint of an older maefast, whose fingerprint lacks the content, resumes with a note."""
    differences, note = compare_fingerprints(meta["data"], fingerprint)
    if differences:
        raise UserInputError(f"--resume: the data differs from what {checkpoint} was trained on: "
                             f"{describe_changes({f'dataset.{k}': v for k, v in differences.items()})}; resume on the "
                             f"same data or start a new run")
    if note:
        warnings.warn(f"--resume: {note}", stacklevel=2)


def record_config(out: Path, config: TrainConfig, recipe: str | None, step: int, differences: dict,
                  schedule_change: str | None = None) -> None:
    """Appends this start (or resume) to <out>/config_history.json: when, from which step, the recipe, the
    changes a resume applied (key -> [old, new]), what it changed in the learning-rate schedule, and the whole
    effective config."""
    path = out / HISTORY_FILE
    history = read_json(path) if path.exists() else []
    history.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "recipe": recipe,
                    "changes": {key: list(change) for key, change in differences.items()},
                    **({"schedule_change": schedule_change} if schedule_change else {}),
                    "config": config.to_dict()})
    write_json_atomic(path, history)
