"""Builds (once per machine and DALI version) and loads maefast's DALI operators, csrc/dali/maefast_dali.cc.

A DALI plugin must be compiled against the installed DALI's headers and library, so it is built on
first use, not by setup.py: with the C++ compiler (`CXX`, default `c++`), DALI's compile and link flags
and the CUDA runtime headers (from `CUDA_HOME`, /usr/local/cuda, or the nvidia-cuda-runtime wheel that
the `dali` extra installs). The library is cached under `MAEFAST_CACHE` (default ~/.cache/maefast),
named by a hash of the sources, the DALI version and the compiler, and written atomically, so parallel
first uses (torchrun ranks) do not see a partial file.

    from maefast.data import dali_plugin
    dali_plugin.load()          # then fn.maefast_image_crops / fn.maefast_packed_crops exist
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

_loaded: Path | None = None


class PluginUnavailable(RuntimeError):
    """maefast's DALI operators could not be built or loaded; the message says why."""


def source_dir() -> Path:
    """csrc/ of a source checkout, or maefast/csrc of an installed package."""
    package = Path(__file__).resolve().parents[1]  # the maefast package folder
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "dali" / "maefast_dali.cc").is_file():
            return candidate
    raise PluginUnavailable(f"maefast's C++ sources (csrc/dali/maefast_dali.cc) are not next to {package}")


def _sources(root: Path) -> list[Path]:
    return [root / "dali" / "maefast_dali.cc", *sorted((root / "decode").glob("*.h"))]  # the hash of the cache


def cuda_include_dir() -> Path | None:
    """A folder holding cuda_runtime.h (DALI's headers include it)."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    for site in map(Path, sys.path):
        candidates += sorted(site.glob("nvidia/cu*/include"))
    return next((c for c in candidates if (c / "cuda_runtime.h").is_file()), None)


def _command(compiler: str, output: Path, dali_flags: list[str], cuda: Path) -> list[str]:
    root = source_dir()
    operators = root / "dali" / "maefast_dali.cc"
    return [*shlex.split(compiler), "-std=c++20", "-O3", "-shared", "-fPIC", "-w", str(operators),
            "-o", str(output), *dali_flags, f"-I{cuda}"]


def library_path() -> Path:
    """Where the plugin for this DALI version and these sources is (or will be) cached."""
    from nvidia.dali import __version__ as dali_version
    compiler = os.environ.get("CXX", "c++")
    digest = hashlib.sha256(f"{dali_version}|{compiler}|{sys.platform}".encode())
    for path in _sources(source_dir()):
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("MAEFAST_CACHE", Path.home() / ".cache" / "maefast"))
    return cache / f"maefast_dali-{digest.hexdigest()[:16]}.so"


def build(path: Path) -> None:
    from nvidia.dali import sysconfig
    cuda = cuda_include_dir()
    if cuda is None:
        raise PluginUnavailable("building maefast's DALI operators needs the CUDA runtime headers (cuda_runtime.h): "
                                "python -m pip install nvidia-cuda-runtime, or set CUDA_HOME")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".partial.so")
    os.close(handle)
    command = _command(os.environ.get("CXX", "c++"), Path(partial),
                       sysconfig.get_compile_flags() + sysconfig.get_link_flags(), cuda)
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PluginUnavailable("building maefast's DALI operators failed:\n" + shlex.join(command) + "\n"
                                    + result.stderr[-4000:])
        os.replace(partial, path)
    except FileNotFoundError as error:
        raise PluginUnavailable(f"no C++ compiler to build maefast's DALI operators ({error}); set CXX") from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)


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
