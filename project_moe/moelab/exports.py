"""Packages that name their public objects without importing the modules that define them, so
that importing one room (``moelab.layers``) does not load another (the data and study stacks)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, homes: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in the modules
    ``homes`` gives (name -> module path relative to the package, e.g. "layers.moe"); a name is
    imported on first use and kept in the package's namespace."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
