"""Swap transformers' pure-torch kernel fallbacks in a modeling module for our own, and only those.

transformers routes Mamba's kernels through ``use_kernel_func_from_hub_with_fallback``: with ``mamba_ssm`` /
``causal_conv1d`` installed the real CUDA kernels run, otherwise a torch reference. Our CPU code (leak-free
packing, fast decode) replaces the torch reference only, never a real kernel. The mixers look these functions up
as module globals at call time, so rebinding the module attribute is enough; the installed function remembers
the one it replaced (under ``mark``), which makes installing idempotent and undoable.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Callable


def is_torch_fallback(fn: Callable, package: str, function: str) -> bool:
    """Whether transformers' wrapper ``fn`` would run its pure-torch reference rather than a real kernel."""
    if inspect.isfunction(fn):
        nonlocals = inspect.getclosurevars(fn).nonlocals
        if "is_new_implementation" in nonlocals:  # use_kernel_func_from_hub_with_fallback's own verdict
            return not nonlocals["is_new_implementation"]
    try:  # unknown wrapper: mirror the decorator's rule (the package imports and has the function)
        return getattr(importlib.import_module(package), function, None) is None
    except Exception:
        return True


class FallbackPatch:
    """The functions ``kernels`` (name in ``module`` -> the (package, function) of its real kernel) we may replace."""

    def __init__(self, module: ModuleType, mark: str, kernels: dict[str, tuple[str, str]]):
        self.module, self.mark, self.kernels = module, mark, kernels
        # transformers' functions as they were before any patching (even if this is re-created after installing)
        self.original = {name: getattr(getattr(module, name), mark, getattr(module, name)) for name in kernels}

    def enable(self, bind: Callable[[str, Callable], Callable]) -> dict[str, bool]:
        """Install ``bind(name, current)`` for each fallback; returns {name: installed}, False where a real kernel
        is in place and was left alone."""
        installed = {}
        for name, (package, function) in self.kernels.items():
            current = getattr(self.module, name)
            if not hasattr(current, self.mark) and is_torch_fallback(current, package, function):
                bound = bind(name, current)
                bound.__name__ = bound.__qualname__ = name
                setattr(bound, self.mark, current)
                setattr(self.module, name, bound)
            installed[name] = hasattr(getattr(self.module, name), self.mark)
        return installed

    def disable(self) -> None:
        for name in self.kernels:
            current = getattr(self.module, name)
            if hasattr(current, self.mark):
                setattr(self.module, name, getattr(current, self.mark))

    def enabled(self) -> bool:
        return any(hasattr(getattr(self.module, name), self.mark) for name in self.kernels)
