"""biascheck: bias checks for vision models as pytest items.

The public API is imported lazily, so that loading the pytest plugin does not import torch.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
#: Public names and the module each lives in.
_API = {
    "assert_check": "assertions",
    "assert_mask_score": "assertions",
    "assert_worst_group_accuracy": "assertions",
    "ModelSpec": "model",
    "save_checkpoint": "model",
    "load_checkpoint": "model",
    "live_model": "model",
    "convert": "convert",
}
#: ``pytest_biascheck.evaluate(model, data, ...)`` is the evaluate module itself, made callable.
_MODULES = ("evaluate",)
__all__ = [*_API, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"pytest_biascheck.{name}")
    if name in _API:
        return getattr(importlib.import_module(f"pytest_biascheck.{_API[name]}"), name)
    raise AttributeError(f"module 'pytest_biascheck' has no attribute {name!r}")
