"""Named registries for pluggable parts: backbones, losses, miners, heads, hash methods."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from deephash_cli.errors import DeephashError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping whose lookup failure lists the valid names.

    >>> losses = Registry("loss")
    >>> @losses.register("facenet")
    ... def make_facenet(): ...
    >>> losses.get("facenet") is make_facenet
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name can be registered once."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise DeephashError listing the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise DeephashError(
                f"unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
