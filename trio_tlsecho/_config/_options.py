"""Handler options: the ``KEY=VALUE`` pairs a handler factory is built with.

Options stay text all the way to the factory: the command line, a config file and an
embedding app hand in the same strings, and the factory, which knows what each option
means, parses them once, at start-up.  An app that wants typed arguments builds its
handler itself and passes that instead of a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._exceptions import ConfigError


def option_key(text: str) -> str:
    """An option's name as the factory's keyword: ``connect-timeout`` -> ``connect_timeout``."""
    key = text.strip().replace("-", "_")
    if not key.isidentifier():
        raise ConfigError(f"handler option name {text!r} is not a name (letters, digits, - and _)")
    return key


def handler_option(value: object, name: str | None = None) -> tuple[str, str]:
    """``KEY=VALUE`` text as a ``(key, value)`` pair; the value may be empty, the key not."""
    if not isinstance(value, str) or "=" not in value:
        what = f"{name} " if name else ""
        raise ConfigError(f"handler option {what}{value!r} is not KEY=VALUE")
    key, _, text = value.partition("=")
    return option_key(key), text


class HandlerOptions(Mapping[str, str]):
    """A read-only ``{key: value}`` of strings; picklable (``--workers`` sends it to each worker)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        data: dict[str, str] = {}
        for raw_key, value in pairs:
            if not isinstance(raw_key, str):
                raise ConfigError(f"handler option names are strings, not {raw_key!r}")
            key = option_key(raw_key)
            if not isinstance(value, str):
                raise ConfigError(
                    f"handler option {key} must be a string (the handler parses it), not {value!r}"
                )
            if key in data:
                raise ConfigError(f"handler option {key} is given twice")
            data[key] = value
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"HandlerOptions({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (HandlerOptions, (self._data,))


def to_handler_options(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> HandlerOptions:
    """An attrs converter: a mapping or pairs (as the command line collects them)."""
    return value if isinstance(value, HandlerOptions) else HandlerOptions(value)
