"""Swap transformers' pure-torch kernel fallbacks in a modeling module for our own, and only those.

transformers routes Mamba's kernels through ``use_kernel_func_from_hub_with_fallback``: with ``mamba_ssm`` /
``causal_conv1d`` installed the real CUDA kernels run, otherwise a torch reference. Our CPU code (leak-free
packing, fast decode) replaces the torch reference only, never a real kernel. The mixers look these functions up
as module globals at call time, so rebinding the module attribute is enough; the installed function remembers
the one it replaced (`REPLACED`), which makes installing idempotent and undoable.
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


REPLACED = "__cascade_replaced__"
"""Attribute of every installed function: the function it replaced (another patch's, or transformers')."""


def replaced(fn: Callable) -> Callable:
    """The function ``fn`` (an installed one) replaced, looked up at call time: a patch installed under another one
    can be taken out of the chain (`FallbackPatch.disable`), and the wrapper above then calls what is left."""
    return getattr(fn, REPLACED)


class FallbackPatch:
    """The functions ``kernels`` (name in ``module`` -> the (package, function) of its real kernel) we may replace.

    Two patches (packing's and fast decode's) may both be installed, one over the other, in either order: each
    installed function carries the function it replaced (`REPLACED`) and its patch (``mark``), so the chain from the
    module attribute down to transformers' function can be walked, and one patch unlinked wherever it sits."""

    def __init__(self, module: ModuleType, mark: str, kernels: dict[str, tuple[str, str]]):
        self.module, self.mark, self.kernels = module, mark, kernels
        # transformers' functions as they were before any patching (even if this is re-created after installing)
        self.original = {name: self._chain(name)[-1] for name in kernels}

    def _chain(self, name: str) -> list[Callable]:
        """The module attribute ``name``, then what each installed function replaced, down to transformers'."""
        chain = [getattr(self.module, name)]
        while hasattr(chain[-1], REPLACED):
            chain.append(replaced(chain[-1]))
        return chain

    def _ours(self, name: str) -> int | None:
        """Where in the chain of ``name`` this patch's function is, or None."""
        return next((i for i, fn in enumerate(self._chain(name)) if getattr(fn, self.mark, False)), None)

    def enable(self, bind: Callable[[str], Callable]) -> dict[str, bool]:
        """Install ``bind(name)`` for each fallback; returns {name: installed}, False where a real kernel
        is in place and was left alone. The installed function finds what it replaced with `replaced(itself)`."""
        installed = {}
        for name, (package, function) in self.kernels.items():
            current = getattr(self.module, name)
            if self._ours(name) is None and is_torch_fallback(self._chain(name)[-1], package, function):
                bound = bind(name)
                bound.__name__ = bound.__qualname__ = name
                setattr(bound, self.mark, True)
                setattr(bound, REPLACED, current)
                setattr(self.module, name, bound)
            installed[name] = self._ours(name) is not None
        return installed

    def disable(self) -> None:
        """Take this patch's functions out of their chains, under another patch's or on top."""
        for name in self.kernels:
            at = self._ours(name)
            if at is None:
                continue
            chain = self._chain(name)
            below = replaced(chain[at])
            if at == 0:
                setattr(self.module, name, below)
            else:
                setattr(chain[at - 1], REPLACED, below)

    def enabled(self) -> bool:
        return any(self._ours(name) is not None for name in self.kernels)
