"""Images by source name, split and selected, and the LightningDataModule that serves them.
The package imports lazily: a recipe's data: section (`cnnlab.data.spec`) is checked without loading
Lightning, which only the data module needs."""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"ImageDataModule": "cnnlab.data.module", "SOURCES": "cnnlab.data.sources", "Split": "cnnlab.data.sources"}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'cnnlab.data' has no attribute {name!r}")
