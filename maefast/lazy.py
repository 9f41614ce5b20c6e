"""Package attributes imported when first used (PEP 562), so that importing a package for one light module does
not import everything it exports: `maefast --help` and the config modules answer without importing torch."""
from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for `package`: its attribute `name` is the attribute of that name of the module
    exports[name], imported on first use. An unknown name raises AttributeError, so that `from package import
    submodule` still finds a submodule."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
