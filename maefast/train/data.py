"""Training data: the dataset named by the config (or, when asked for, a synthetic screen) through maefast.data's
loader."""
from __future__ import annotations

from pathlib import Path

from maefast.data import make_loader, open_dataset
from maefast.data.synthetic import synth_screen
from maefast.distributed import DistributedContext, barrier
from maefast.errors import UserInputError
from maefast.train.config import TrainConfig


def synthetic_screen_path(config: TrainConfig, out_dir: Path, context: DistributedContext) -> Path:
    """Renders (once; a resumed run reuses it) the synthetic screen a run with data.synthetic trains on."""
    data = config.data
    path = Path(out_dir) / "data"
    channels = config.model.overrides.get("in_chans") or config.model.overrides.get("max_in_chans") or 6
    if context.is_main:
        synth_screen(path, layout="rxrx", num_genes=data.synthetic_genes, replicates=2, num_plates=2,
                     num_experiments=1, controls_per_plate=4, sites_per_well=2, size=data.synthetic_site_size,
                     channels=channels, seed=config.run.seed, progress=True)
    barrier(context)
    return path


def build_train_loader(config: TrainConfig, out_dir, context: DistributedContext):
    data = config.data
    if data.synthetic and data.path:
        raise UserInputError(f"data.synthetic=true renders a synthetic screen to train on, and data.path names a data "
                             f"set ({data.path}): choose one")
    if not data.synthetic and not data.path:
        raise UserInputError("no training data: name the data set with --data PATH (--set data.path=PATH), or train "
                             "on a synthetic screen rendered into the run directory with --synthetic-data "
                             "(--set data.synthetic=true)")
    path = data.path or synthetic_screen_path(config, out_dir, context)
    dataset = open_dataset(path, layout=data.layout, channels=list(data.channels) or None,
                           allow_outside_root=data.allow_outside_root)
    # every step the same shape: a smaller last batch of an epoch would make a compiled model recompile
    loader = make_loader(dataset, batch_size=data.batch_size, crop_size=data.crop_size,
                         crops_per_image=data.crops_per_image, seed=config.run.seed, rank=context.rank,
                         world_size=context.world_size, device=context.device, backend=data.backend,
                         on_error=data.on_error, num_workers=data.num_workers, prefetch=data.prefetch,
                         dali_device=data.dali_device, drop_last=True)
    if len(loader) == 0:
        raise UserInputError(f"data.batch_size={data.batch_size} images per step on each of {context.world_size} "
                             f"rank(s) need at least {data.batch_size * context.world_size} images; {path} has "
                             f"{len(dataset)}: lower data.batch_size")
    return loader
