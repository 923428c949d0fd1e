"""Find a handler by name: built-ins, the entry-point group, or ``module:attr``; build it.

What a name resolves to is either a handler (an async callable taking a
:class:`Connection`) or a *factory*: a plain callable that takes the handler's options
as keyword arguments (strings) and returns the handler.  The factory is called once, at
start-up, so that an unknown, missing or malformed option stops the server before it
listens, in one line, and never at the first connection.  A class whose instances are
async callables is a factory too: its ``__init__`` takes the options.

Entry points are read when a name is looked up, not at import time, so that a
plugin installed after start-up of a long-lived embedding app is still found
and a broken plugin only breaks the lookup that names it.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TypeGuard

from .._exceptions import ConfigError, HandlerNotFoundError
from ._api import Handler
from ._builtin import discard, echo
from ._forward import forward

ENTRY_POINT_GROUP = "trio_tlsecho.handlers"

# Also registered in the entry-point group by pyproject.toml; kept here so the
# built-ins resolve from a source checkout that was never pip-installed.
_BUILTINS: dict[str, object] = {"echo": echo, "discard": discard, "forward": forward}


def handler_names() -> list[str]:
    """Every name ``resolve_handler`` accepts, sorted."""
    names = set(_BUILTINS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve_handler(spec: str | object, options: Mapping[str, str] | None = None) -> Handler:
    """Turn ``"echo"``, ``"package.module:attr"`` (or a handler or factory itself) into a handler.

    *options* go to a factory as keyword arguments; a plain handler takes none.
    """
    name = spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))
    target = _lookup(spec) if isinstance(spec, str) else spec
    if not callable(target):
        raise HandlerNotFoundError(f"handler {name!r} is not callable: {target!r}")
    options = dict(options or {})
    if _is_handler(target):
        if options:
            raise ConfigError(f"handler {name!r} takes no options (given: {', '.join(options)})")
        return target
    handler = _build(target, name, options)
    if not _is_handler(handler):
        raise HandlerNotFoundError(
            f"handler {name!r}: its factory returned {handler!r}, not an async function taking a Connection"
        )
    return handler


def _lookup(spec: str) -> object:
    if ":" in spec:
        return _import_attr(spec)
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if eps:
        try:
            return eps[0].load()
        except Exception as exc:  # whatever the plugin's import raises: one line, not ours
            raise HandlerNotFoundError(
                f"handler {spec!r} ({eps[0].value}) failed to load: {_describe(exc)}"
            ) from exc
    if spec in _BUILTINS:
        return _BUILTINS[spec]
    raise HandlerNotFoundError(
        f"unknown handler {spec!r}; known handlers: {', '.join(handler_names())} (or give module:attr)"
    )


def _is_handler(target: object) -> TypeGuard[Handler]:
    # An instance with ``async def __call__`` is a handler; a class (even one whose
    # instances are handlers) is a factory: type.__call__ is not a coroutine function.
    call = type(target).__call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _build(factory: object, name: str, options: dict[str, str]) -> Handler:
    """Call *factory* with *options*, after checking they fit its signature."""
    assert callable(factory)
    _check_fits(factory, name, options)
    try:
        handler: Handler = factory(**options)
    except ConfigError as exc:
        raise ConfigError(f"handler {name!r}: {exc}") from None
    except ValueError as exc:  # the factory's own parse of an option's value
        raise ConfigError(f"handler {name!r}: {exc}") from None
    except Exception as exc:  # whatever the plugin's code raises: one line with where, not ours
        raise HandlerNotFoundError(f"handler {name!r} failed to start: {_describe(exc)}") from exc
    return handler


_NOT_A_HANDLER = "must be an async function taking a Connection, or a factory taking its options as keywords"


def _check_fits(factory: object, name: str, options: dict[str, str]) -> None:
    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without one: let the call decide
        return
    params = signature.parameters.values()
    keywords = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = [p.name for p in keywords.values() if p.default is p.empty]
    if any(p.kind is p.POSITIONAL_ONLY and p.default is p.empty for p in params):
        raise HandlerNotFoundError(f"handler {name!r} {_NOT_A_HANDLER}")
    if not options and len(keywords) == 1 and _looks_like_a_connection(*keywords.values()):
        # ``def handler(conn)``: a handler written without ``async``, not a factory.
        raise HandlerNotFoundError(f"handler {name!r} {_NOT_A_HANDLER}")
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for key in options:
            if key not in keywords:
                known = ", ".join(keywords) or "none"
                raise ConfigError(f"handler {name!r} has no option {key!r} (its options: {known})")
    for key in required:
        if key not in options:
            raise ConfigError(f"handler {name!r} needs option {key!r} (--handler-option {key}=VALUE)")


def _looks_like_a_connection(param: inspect.Parameter) -> bool:
    return param.name in ("conn", "connection") or "Connection" in str(param.annotation)


def _import_attr(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HandlerNotFoundError(f"bad handler reference {spec!r}: expected module:attr")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a relative name (TypeError), or the module's own error
        raise HandlerNotFoundError(f"cannot import handler module {module_name!r}: {_describe(exc)}") from exc
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerNotFoundError(f"module {module_name!r} has no attribute {attr!r}") from None
    return target


def _describe(exc: Exception) -> str:
    """``ImportError``'s own words; anything else with its type and where it was raised."""
    if isinstance(exc, ImportError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
