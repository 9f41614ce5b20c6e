"""Native libraries maefast compiles on first use, with the C++ compiler (`CXX`, default `c++`): the DALI plugin
(maefast.data.dali_plugin, which must match the installed DALI), and maefast's readers (csrc/decode.cpp, the
bindings maefast._C holds) where maefast._C was not built (an install without pybind11, as on a GPU image;
pybind11's headers then come from the copy inside torch).

A library is cached under `MAEFAST_CACHE` (default ~/.cache/maefast), named by a hash of its sources, the
compiler, the platform and what else it depends on, and written atomically, so parallel first uses (torchrun
ranks) never see a partial file.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from maefast.errors import MissingDependency

_readers = None


def source_dir() -> Path:
    """csrc/ of a source checkout, or maefast/csrc of an installed package."""
    package = Path(__file__).resolve().parents[1]  # the maefast package folder
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "decode" / "image.h").is_file():
            return candidate
    raise FileNotFoundError(f"maefast's C++ sources (csrc/) are not next to {package}")


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "c++"))


def cached_library(stem: str, sources: list[Path], key: str, suffix: str = ".so") -> Path:
    """Where the library built from `sources` (and depending on `key`) is, or will be, cached."""
    digest = hashlib.sha256(f"{key}|{shlex.join(compiler())}|{sys.platform}".encode())
    for path in sources:
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("MAEFAST_CACHE", Path.home() / ".cache" / "maefast"))
    return cache / f"{stem}-{digest.hexdigest()[:16]}{suffix}"


def compile_library(arguments: list[str], path: Path, what: str, error: type[Exception]) -> None:
    """Runs `compiler() + arguments + -o <temporary>` and renames the result to `path`; `error` naming `what`
    (with the compiler's message) when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".partial.so")
    os.close(handle)
    command = [*compiler(), *arguments, "-o", partial]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise error(f"building {what} failed:\n{shlex.join(command)}\n{result.stderr[-4000:]}")
        os.replace(partial, path)
    except FileNotFoundError as missing:
        raise error(f"no C++ compiler to build {what} ({missing}); set CXX") from missing
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def pybind11_include() -> Path | None:
    """pybind11's headers: the pybind11 package's, else the copy torch ships."""
    try:
        import pybind11
        return Path(pybind11.get_include())
    except ImportError:
        import torch
        bundled = Path(torch.__file__).parent / "include"
        return bundled if (bundled / "pybind11" / "pybind11.h").is_file() else None


def readers_module():
    """maefast's readers built from csrc/decode.cpp as the module maefast_readers (cached): the same bindings as
    maefast._C's. MissingDependency when they cannot be built."""
    global _readers
    if _readers is not None:
        return _readers
    try:
        root = source_dir()
    except FileNotFoundError as error:
        raise MissingDependency(f"maefast._C was not built and {error}") from None
    sources = [root / "decode.cpp", root / "decode" / "module.cpp"]
    headers = [root / "common.h", *sorted((root / "decode").glob("*.h"))]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    path = cached_library("maefast_readers", sources + headers, sys.version, suffix)
    if not path.is_file():
        include = pybind11_include()
        if include is None:
            raise MissingDependency("reading images needs maefast's C++ readers: maefast._C was not built and no "
                                    "pybind11 headers were found to build them (python -m pip install pybind11)")
        compile_library(["-std=c++17", "-O2", "-shared", "-fPIC", "-w", *map(str, sources), f"-I{root}",
                         f"-I{include}", f"-I{sysconfig.get_paths()['include']}"], path,
                        "maefast's readers (maefast._C was not built)", MissingDependency)
    loader = importlib.machinery.ExtensionFileLoader("maefast_readers", str(path))
    spec = importlib.util.spec_from_file_location("maefast_readers", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    _readers = module
    return module
