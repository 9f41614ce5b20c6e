"""maefast.data: dataset layouts (RxRx PNG, JUMP TIFF, packed shards), DALI and PyTorch crop loaders,
validation and the synthetic screen. See docs/data.md."""
from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError, read_channel
from maefast.data.layouts import LAYOUTS, open_dataset
from maefast.data.loader import Loader, make_loader, make_tile_loader
from maefast.data.render import render_sites

__all__ = ["LAYOUTS", "Dataset", "ImageReadError", "Loader", "make_loader", "make_tile_loader", "open_dataset",
           "read_channel", "render_sites"]
