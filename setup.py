"""Builds maefast._C (the C++ CPU kernels in csrc/) with pybind11, maps kernels/ to maefast.kernels and
ships csrc/ as maefast.csrc (sources of the DALI plugin, built on first use).

The extension takes plain contiguous buffers from numpy/torch, so it links neither libtorch nor CUDA.
OpenMP is used when the compiler accepts -fopenmp.
"""
import os
import shutil
import subprocess
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup


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


extension = Pybind11Extension("maefast._C", sorted(glob("csrc/*.cpp")), cxx_std=17)

setup(
    # csrc/ ships as maefast/csrc: the DALI plugin is compiled from it on first use (maefast.data.dali_plugin)
    packages=find_packages(include=["maefast", "maefast.*"]) + ["maefast.kernels", "maefast.csrc"],
    package_dir={"maefast.kernels": "kernels", "maefast.csrc": "csrc"},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
