"""Registries of named parts: `MODELS.get("vgg-small")`, with did-you-mean on unknown names."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """A name -> part table. Prefixed names ("torchvision:resnet18") go to a registered resolver."""

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(part: T) -> T:
            if name in self._parts:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._parts[name] = part
            return part

        return add

    def register_prefix(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """`resolve(rest)` builds the part for '<prefix>:<rest>' or raises KeyError with a reason."""
        self._prefixes[prefix] = resolve

    def names(self) -> list[str]:
        return sorted(self._parts) + [f"{p}:<name>" for p in sorted(self._prefixes)]

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise KeyError(f"{self.kind} name must be a string, got {name!r}")
        if name in self._parts:
            return self._parts[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            return self._prefixes[prefix](rest)
        raise KeyError(
            f"'{name}' is not {'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind}{did_you_mean(name, sorted(self._parts))}; "
            f"choose from {', '.join(self.names())}"
        )

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts))
