"""Makes `maefast.kernels` importable from a source checkout.

Installed builds place kernels/ inside the package as maefast/kernels. In a source checkout (tests run
from the repository root, `PYTHONPATH=.`), kernels/ sits beside maefast/, so it is registered under its
package name here. kernels/__init__.py imports nothing heavy, so this costs nothing.
"""
import importlib.util
import sys
from pathlib import Path


def register_kernels_package() -> None:
    if "maefast.kernels" in sys.modules:
        return
    package_dir = Path(__file__).resolve().parent
    if (package_dir / "kernels" / "__init__.py").is_file():
        return  # installed layout: the ordinary import finds it
    source_kernels = package_dir.parent / "kernels" / "__init__.py"
    if not source_kernels.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "maefast.kernels", source_kernels, submodule_search_locations=[str(source_kernels.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["maefast.kernels"] = module
    spec.loader.exec_module(module)
    sys.modules["maefast"].kernels = module
