"""Training engine: config and recipes, optimizers, the loop, checkpoints, distributed, observability."""
from maefast.train.config import TrainConfig, load_config, recipe_names

__all__ = ["TrainConfig", "load_config", "recipe_names", "pretrain"]


def pretrain(recipe: str = "debug", out: str = "runs/pretrain", overrides: list[str] | None = None,
             resume: bool = False, show_progress: bool = True, allow_config_change: bool = False) -> dict:
    """Library entry point of `maefast train`: returns the run summary (steps, FLOPs, final loss, paths)."""
    from maefast.train.loop import train
    return train(load_config(recipe, overrides), out, resume=resume, show_progress=show_progress, recipe=recipe,
                 allow_config_change=allow_config_change)
