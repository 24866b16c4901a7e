"""Registries of named parts: `MODELS.get("vgg-small")`, with did-you-mean on unknown names, and
recipe keyword arguments checked against the registered part's own signature."""
from __future__ import annotations

import difflib
import functools
import inspect
import typing
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, create_model

T = TypeVar("T")

# every registry made, by the name `cnnlab list` gives it: a new registry is listed without editing the list
ALL: dict[str, "Registry[Any]"] = {}


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.lru_cache(maxsize=None)
def signature_model(fn: Callable, skip: frozenset[str]) -> type[BaseModel]:
    """A pydantic model of `fn`'s keyword parameters (minus `skip`), so recipe keys are checked
    against the function they feed: types, constraints (`Annotated[int, Field(ge=0)]`), names.
    Non-finite floats are refused, as in every recipe section."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
    return create_model(f"{fn.__name__}_kwargs", __config__=config, **fields)


class Registry(Generic[T]):
    """A name -> part table. Prefixed names ("torchvision:resnet18") go to a registered resolver.

    `supplied` names the parameters the caller fills in itself, never a recipe (a model's
    in_channels and num_classes come from the data): a set, or a function of the part when parts
    add their own (an augmentation op's fitted parameters)."""

    def __init__(self, kind: str, supplied: Iterable[str] | Callable[[T], Iterable[str]] = ()):
        self.kind = kind
        self._supplied = supplied
        self._parts: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}
        if self.listed_as in ALL:
            raise KeyError(f"two registries would be listed as {self.listed_as!r}")
        ALL[self.listed_as] = self

    @property
    def listed_as(self) -> str:
        """The plural `cnnlab list` shows it under: 'augmentation op' -> 'ops', 'model' -> 'models'."""
        return self.kind.split()[-1] + "s"

    def prefixes(self) -> dict[str, Callable[[str], T]]:
        """'<prefix>' -> the resolver of '<prefix>:<name>' parts (torchvision's models, for one)."""
        return dict(self._prefixes)

    def parts(self) -> dict[str, T]:
        return dict(sorted(self._parts.items()))

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

    def supplied_by_caller(self, part: T) -> frozenset[str]:
        s = self._supplied
        return frozenset(s(part) if callable(s) else s)

    def signature(self, part: T) -> type[BaseModel]:
        """The recipe-settable keyword parameters of `part`, as a pydantic model."""
        return signature_model(part, self.supplied_by_caller(part))

    def check_kwargs(self, part: T, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Recipe keyword arguments for `part`, validated against its signature (raises pydantic's
        ValidationError: unknown names, wrong types, broken constraints)."""
        return dict(self.signature(part).model_validate(kwargs))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts))
