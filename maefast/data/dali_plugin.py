"""Builds (once per machine and DALI version) and loads maefast's DALI operators, csrc/dali/maefast_dali.cc.

A DALI plugin must be compiled against the installed DALI's headers and library, so it is built on
first use, not by setup.py (maefast.data.native): with the C++ compiler (`CXX`, default `c++`), DALI's
compile and link flags and the CUDA runtime headers (from `CUDA_HOME`, /usr/local/cuda, or the
nvidia-cuda-runtime wheel that the `dali` extra installs), cached by a hash of the sources, the DALI version
and the compiler.

    from maefast.data import dali_plugin
    dali_plugin.load()          # then fn.maefast_image_crops / fn.maefast_packed_crops exist
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from maefast.data.native import cached_library, compile_library, source_dir

_loaded: Path | None = None


class PluginUnavailable(RuntimeError):
    """maefast's DALI operators could not be built or loaded; the message says why."""


def _sources(root: Path) -> list[Path]:
    return [root / "dali" / "maefast_dali.cc", *sorted((root / "decode").glob("*.h"))]


def cuda_include_dir() -> Path | None:
    """A folder holding cuda_runtime.h (DALI's headers include it)."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    for site in map(Path, sys.path):
        candidates += sorted(site.glob("nvidia/cu*/include"))
    return next((c for c in candidates if (c / "cuda_runtime.h").is_file()), None)


def library_path() -> Path:
    """Where the plugin for this DALI version and these sources is (or will be) cached."""
    from nvidia.dali import __version__ as dali_version
    return cached_library("maefast_dali", _sources(plugin_sources()), f"dali {dali_version}")


def plugin_sources() -> Path:
    try:
        return source_dir()
    except FileNotFoundError as error:
        raise PluginUnavailable(str(error)) from None


def build(path: Path) -> None:
    from nvidia.dali import sysconfig
    cuda = cuda_include_dir()
    if cuda is None:
        raise PluginUnavailable("building maefast's DALI operators needs the CUDA runtime headers (cuda_runtime.h): "
                                "python -m pip install nvidia-cuda-runtime, or set CUDA_HOME")
    operators = plugin_sources() / "dali" / "maefast_dali.cc"
    compile_library(["-std=c++20", "-O3", "-shared", "-fPIC", "-w", str(operators),
                     *sysconfig.get_compile_flags(), *sysconfig.get_link_flags(), f"-I{cuda}"], path,
                    "maefast's DALI operators", PluginUnavailable)


def load() -> Path:
    """Builds the plugin if it is not cached yet and loads it into DALI; returns the library's path."""
    global _loaded
    if _loaded is not None:
        return _loaded
    from nvidia.dali import plugin_manager
    path = library_path()
    if not path.is_file():
        build(path)
    try:
        plugin_manager.load_library(str(path))
    except RuntimeError as error:
        raise PluginUnavailable(f"loading {path} into DALI failed: {error}") from error
    _loaded = path
    return path
