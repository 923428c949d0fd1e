"""Settings from a TOML file and from ``TRIO_TLSECHO_*`` variables, under the command line.

Theory of operation
-------------------
Precedence, lowest first: the built-in defaults, the file (``serve --config FILE``),
the environment, the flags on the command line.  Both sources are read *through the
parser's own flags*: a file key is a flag's name without its dashes
(``handshake-timeout = 5``), an environment variable its name in capitals
(``TRIO_TLSECHO_LOG_LEVEL``), and each value is checked by the flag's own ``type=``
and ``choices``, so a value means the same wherever it is written.  What the two
sources give becomes the flags' defaults, and the command line is parsed again over
them: a flag given there wins.  A repeatable flag given there replaces the file's
list rather than adding to it (``--listen`` on the command line is where to listen,
not one more place); ``--handler-option`` merges key by key.

A mistake names where it is (``serve.toml: key 'workers': ...``, or the variable)
and is one line, exit status 2, as a flag's is.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

from .._exceptions import ConfigError
from ._common import count_arg, duration_arg, duration_or_zero_arg

ENV_PREFIX = "TRIO_TLSECHO_"
#: The flags read from the environment (what a container sets), by argparse dest.
ENV_FLAGS = (
    "config",
    "listen",
    "certs",
    "cert",
    "key",
    "ca",
    "crl",
    "handler",
    "workers",
    "metrics",
    "log_level",
    "log_format",
)
#: Flags that are no setting: what the file itself is, and --help.
_NOT_SETTINGS = frozenset({"config", "help", "version"})
_REPEATABLE = (argparse._AppendAction, argparse._ExtendAction)
#: The flag types that read a number: a TOML number for them, a string for the others.
NUMERIC_TYPES = (count_arg,)
#: The flag types that read a time: a TOML number (seconds) or a string with a unit ("30s").
DURATION_TYPES = (duration_arg, duration_or_zero_arg)


def settable(parsers: Iterable[argparse.ArgumentParser]) -> dict[str, argparse.Action]:
    """The flags a file may set, by key (``--min-tls``: ``min-tls``); later parsers win."""
    keys: dict[str, argparse.Action] = {}
    for parser in parsers:
        for action in parser._actions:
            long = [o for o in action.option_strings if o.startswith("--")]
            if long and action.dest not in _NOT_SETTINGS:
                keys[long[0][2:]] = action
    return keys


def read_file(path: Path, actions: Mapping[str, argparse.Action]) -> dict[str, object]:
    """*path*'s settings, checked and converted, by dest."""
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, object] = {}
    for key, raw in table.items():
        action = actions.get(key)
        if action is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggest(key, actions)}")
        values[action.dest] = _from_toml(action, raw, f"{path}: key {key!r}")
    return values


def read_environment(actions: Mapping[str, argparse.Action], environ: Mapping[str, str]) -> dict[str, object]:
    """The ``TRIO_TLSECHO_*`` settings among *actions*, by dest (an empty variable is unset)."""
    values: dict[str, object] = {}
    for action in actions.values():
        name = ENV_PREFIX + action.dest.upper()
        text = environ.get(name, "")
        if action.dest in ENV_FLAGS and text:
            if isinstance(action, _REPEATABLE):
                values[action.dest] = [_convert(action, item.strip(), name) for item in text.split(",")]
            else:
                values[action.dest] = _convert(action, text, name)
    return values


def apply(args: argparse.Namespace, layered: Mapping[str, object]) -> None:
    """Correct *args*, parsed with *layered* as defaults, for the repeatable flags.

    argparse appends a repeatable flag's values to its default list (the very object
    while none is given); the command line's values replace the file's instead.
    """
    for dest, default in layered.items():
        value = getattr(args, dest, None)
        if isinstance(default, list) and isinstance(value, list) and value is not default:
            mine = value[len(default) :]
            setattr(args, dest, _merge(dest, default, mine))


def _merge(dest: str, default: list[object], given: list[object]) -> list[object]:
    # Handler options are a mapping: a key on the command line overrides the file's.
    if dest == "handler_options":
        pairs = cast("list[tuple[str, str]]", [*default, *given])
        return list(dict(pairs).items())
    return given


def _suggest(key: str, actions: Mapping[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), actions, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_toml(action: argparse.Action, raw: object, where: str) -> object:
    if action.nargs == 0:  # a switch: --proxy-protocol / --no-proxy-protocol
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, not {_kind(raw)}")
        return raw
    if isinstance(action, _REPEATABLE):
        if action.dest == "handler_options" and isinstance(raw, dict):
            # A table, as handlers' options read best: [handler-option] with KEY = "VALUE".
            texts = [f"{k}={_option_value(v, f'{where}: {k!r}')}" for k, v in raw.items()]
            return [_convert(action, text, where) for text in texts]
        items = raw if isinstance(raw, list) else [raw]
        return [_from_toml_scalar(action, item, where) for item in items]
    return _from_toml_scalar(action, raw, where)


def _option_value(raw: object, where: str) -> str:
    # Options stay text to the handler, which parses them: 5 reaches it as "5", as
    # --handler-option connect_timeout=5 would; true as "true".
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return str(raw)
    raise ConfigError(f"{where}: expected a string, number or true/false, not {_kind(raw)}")


def _from_toml_scalar(action: argparse.Action, raw: object, where: str) -> object:
    if action.type in DURATION_TYPES:
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            return _convert(action, str(raw), where)
        raise ConfigError(f'{where}: expected a number of seconds or a time such as "30s", not {_kind(raw)}')
    numeric = action.type in NUMERIC_TYPES
    if numeric and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return _convert(action, str(raw), where)
    if not numeric and isinstance(raw, str):
        return _convert(action, raw, where)
    raise ConfigError(f"{where}: expected {'a number' if numeric else 'a string'}, not {_kind(raw)}")


def _kind(raw: object) -> str:
    kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "a list"}
    kinds[dict] = "a table"
    return next((name for t, name in kinds.items() if isinstance(raw, t)), type(raw).__name__)


def _convert(action: argparse.Action, text: str, where: str) -> object:
    """*text* as the flag would read it on the command line, or one line saying why not."""
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {text!r} is not one of {choices}")
    return value
