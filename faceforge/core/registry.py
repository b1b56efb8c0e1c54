"""Name -> constructor registries, so parts are chosen by name from configs instead of if/elif chains."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of constructors.

    >>> BACKBONES = Registry("backbone")
    >>> @BACKBONES.register("tiny")
    ... def tiny(**kw): ...
    >>> BACKBONES.build("tiny")

    :meth:`register_lazy` names an entry by the module that registers it, imported on first use: an entry
    whose module is heavy (MTCNN imports PyTorch) then costs nothing to a process that never builds it (a
    worker process that only runs YuNet starts a second sooner).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it when imported

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self._lazy.pop(name, None)
            return obj

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        """Promise ``name``: ``module`` registers it when imported, which :meth:`get` does on first use."""
        if name in self._lazy:
            raise KeyError(f"{self.kind} '{name}' is registered twice")
        if name not in self._items:  # (already imported: nothing to promise)
            self._lazy[name] = module

    def _load(self, name: str) -> None:
        """Import the module promised for ``name``. The promise is dropped only once the module has registered
        it: a module that fails to import (a missing optional dependency) raises its own error at every lookup
        instead of the entry turning "unknown" after the first."""
        module = self._lazy.get(name)
        if module is not None and name not in self._items:
            importlib.import_module(module)
            if name not in self._items:
                raise KeyError(f"{self.kind} '{name}': importing {module} did not register it")
        self._lazy.pop(name, None)

    def unregister(self, name: str) -> Callable[..., T]:
        """Remove and return an entry (tests that register a temporary plug-in clean up with it)."""
        return self._items.pop(name)

    def get(self, name: str) -> Callable[..., T]:
        if name in self._lazy:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted({*self._items, *self._lazy})

    def ordered_names(self) -> list[str]:
        """Names in the order they were registered."""
        return [*self._items, *(n for n in self._lazy if n not in self._items)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy
