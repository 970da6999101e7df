"""biascheck: bias checks for vision models as pytest items.

The assertion helpers are imported lazily, so that loading the pytest plugin does not import torch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["assert_check", "assert_mask_score", "assert_worst_group_accuracy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pytest_biascheck import assertions

        return getattr(assertions, name)
    raise AttributeError(f"module 'pytest_biascheck' has no attribute {name!r}")
