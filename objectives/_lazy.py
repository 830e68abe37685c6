"""Lazy exports: a package lists names whose modules load torch, and imports each on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps an attribute to the module (absolute, or relative to
    ``package``) that defines it, imported when the attribute is first asked for, so importing the package stays
    cheap (``hpo status`` never loads torch)."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
