"""Builds maefast._C (the C++ CPU kernels in csrc/) with pybind11, maps kernels/ to maefast.kernels and
ships csrc/ as maefast.csrc (sources of the DALI plugin, built on first use).

The extension takes plain contiguous buffers from numpy/torch, so it links neither libtorch nor CUDA.
OpenMP is used when the compiler accepts -fopenmp. The extension is optional: where it cannot be built (no
compiler, or pybind11 missing under --no-build-isolation) the install goes on without it, the CPU ops run
their PyTorch reference (maefast warns once at run time), and the image readers it holds (csrc/decode.cpp)
are compiled on first use instead (maefast.data.native).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from glob import glob

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # --no-build-isolation without pybind11: install without the C++ CPU kernels
    Pybind11Extension = build_ext = None


def compiler_accepts_openmp(compiler_cmd):
    """Compiles a tiny OpenMP program; True when the compiler and its runtime support it."""
    source = "#include <omp.h>\nint main(){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.cpp")
        with open(path, "w") as handle:
            handle.write(source)
        result = subprocess.run(
            [compiler_cmd, "-fopenmp", path, "-o", os.path.join(tmp, "probe")],
            capture_output=True,
        )
        return result.returncode == 0


def extension_modules() -> tuple[list, dict]:
    """(ext_modules, cmdclass): maefast._C when pybind11 is importable, else nothing (with a warning)."""
    if Pybind11Extension is None:
        print("maefast: pybind11 is not installed, so maefast._C (the C++ CPU kernels) is not built; "
              "python -m pip install pybind11 and reinstall to build it", file=sys.stderr)
        return [], {}

    class BuildExtWithOpenMP(build_ext):
        def build_extensions(self):
            compiler_cmd = self.compiler.compiler_cxx[0] if hasattr(self.compiler, "compiler_cxx") else "c++"
            use_openmp = shutil.which(compiler_cmd) is not None and compiler_accepts_openmp(compiler_cmd)
            for extension in self.extensions:
                extension.extra_compile_args += ["-O3"]
                if use_openmp:
                    extension.extra_compile_args += ["-fopenmp"]
                    extension.extra_link_args += ["-fopenmp"]
                    extension.define_macros += [("MAEFAST_OPENMP", "1")]
            super().build_extensions()

    # optional: a failed build (no compiler) warns and installs the rest
    extension = Pybind11Extension("maefast._C", sorted(glob("csrc/*.cpp")), cxx_std=17, optional=True)
    return [extension], {"build_ext": BuildExtWithOpenMP}


ext_modules, cmdclass = extension_modules()

setup(
    # csrc/ ships as maefast/csrc: the DALI plugin is compiled from it on first use (maefast.data.dali_plugin)
    packages=find_packages(include=["maefast", "maefast.*"]) + ["maefast.kernels", "maefast.csrc"],
    package_dir={"maefast.kernels": "kernels", "maefast.csrc": "csrc"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
