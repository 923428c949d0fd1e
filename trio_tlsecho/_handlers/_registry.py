"""Find a handler by name: built-ins, the entry-point group, or ``module:attr``.

Entry points are read when a name is looked up, not at import time, so that a
plugin installed after start-up of a long-lived embedding app is still found
and a broken plugin only breaks the lookup that names it.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from importlib.metadata import entry_points

from .._exceptions import HandlerNotFoundError
from ._api import Handler
from ._builtin import discard, echo

ENTRY_POINT_GROUP = "trio_tlsecho.handlers"

# Also registered in the entry-point group by pyproject.toml; kept here so the
# built-ins resolve from a source checkout that was never pip-installed.
_BUILTINS: dict[str, Handler] = {"echo": echo, "discard": discard}


def handler_names() -> list[str]:
    """Every name ``resolve_handler`` accepts, sorted."""
    names = set(_BUILTINS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve_handler(spec: str) -> Handler:
    """Turn ``"echo"`` or ``"package.module:attr"`` into a handler."""
    if ":" in spec:
        target = _import_attr(spec)
    else:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if eps:
            try:
                target = eps[0].load()
            except Exception as exc:  # whatever the plugin's import raises: one line, not ours
                raise HandlerNotFoundError(
                    f"handler {spec!r} ({eps[0].value}) failed to load: {_describe(exc)}"
                ) from exc
        elif spec in _BUILTINS:
            target = _BUILTINS[spec]
        else:
            raise HandlerNotFoundError(
                f"unknown handler {spec!r}; known handlers: {', '.join(handler_names())}"
                " (or give module:attr)"
            )
    if not callable(target):
        raise HandlerNotFoundError(f"handler {spec!r} is not callable: {target!r}")
    if not (inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)):
        raise HandlerNotFoundError(f"handler {spec!r} must be an async function taking a Connection")
    return target


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
