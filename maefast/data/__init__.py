"""maefast.data: dataset layouts (RxRx PNG, JUMP TIFF, packed shards), DALI and PyTorch crop loaders,
validation and the synthetic screen. See docs/data.md. The exports are imported on first use (maefast.lazy):
the loaders import torch, the layouts do not."""
from maefast.lazy import lazy_attributes

EXPORTS = {"Dataset": "maefast.data.dataset", "ImageReadError": "maefast.data.decode",
           "read_channel": "maefast.data.decode", "LAYOUTS": "maefast.data.layouts",
           "open_dataset": "maefast.data.layouts", "Loader": "maefast.data.loader",
           "make_loader": "maefast.data.loader", "make_tile_loader": "maefast.data.loader",
           "render_sites": "maefast.data.render"}
__all__ = list(EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, EXPORTS)
