"""Handler lookup: built-in names, the entry-point group, module:attr."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from trio_tlsecho import (
    ClientConfig,
    HandlerNotFoundError,
    discard,
    echo,
    handler_names,
    open_client,
    resolve_handler,
)
from trio_tlsecho._handlers import ENTRY_POINT_GROUP

from .conftest import Start


def test_builtins() -> None:
    assert resolve_handler("echo") is echo
    assert resolve_handler("discard") is discard
    assert {"echo", "discard"} <= set(handler_names())


def test_module_attr() -> None:
    assert resolve_handler("trio_tlsecho._handlers:echo") is echo


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking distribution that registers 'shout' in our entry-point group."""
    (tmp_path / "shout_plugin.py").write_text(
        textwrap.dedent(
            """
            async def shout(conn):
                while data := await conn.stream.receive_some(1024):
                    await conn.stream.send_all(data.upper())

            not_async = len
            """
        )
    )
    (tmp_path / "failing_plugin.py").write_text(
        textwrap.dedent(
            """
            async def handler(conn):
                pass

            1 / 0
            """
        )
    )
    dist = tmp_path / "shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshout = shout_plugin:shout\nbroken = shout_plugin:missing\n"
        "failing = failing_plugin:handler\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("shout_plugin", None)
    sys.modules.pop("failing_plugin", None)


def test_entry_point(plugin: Path) -> None:
    handler = resolve_handler("shout")
    assert handler.__name__ == "shout"  # type: ignore[attr-defined]
    assert "shout" in handler_names()


def test_broken_entry_point_is_a_clear_error(plugin: Path) -> None:
    with pytest.raises(
        HandlerNotFoundError, match=r"handler 'broken' \(shout_plugin:missing\) failed to load"
    ):
        resolve_handler("broken")
    # A module that raises on import: its error in one line, with where it was raised.
    with pytest.raises(
        HandlerNotFoundError,
        match=r"handler 'failing' \(failing_plugin:handler\) failed to load: ZeroDivisionError: "
        r"division by zero \(at .*failing_plugin\.py:5\)$",
    ):
        resolve_handler("failing")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(
        HandlerNotFoundError, match=r"unknown handler 'nope'; known handlers: .*discard, echo"
    ):
        resolve_handler("nope")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:h", "cannot import handler module 'no_such_module_xyz'"),
        (".relative:h", "cannot import handler module '.relative': TypeError: "),
        ("failing_plugin:handler", r"failing_plugin': ZeroDivisionError: division by zero \(at "),
        ("trio_tlsecho._handlers._builtin:nothing", "has no attribute 'nothing'"),
        (":echo", "expected module:attr"),
        ("trio_tlsecho._handlers._api:RECEIVE_SIZE", "is not callable"),
        ("shout_plugin:not_async", "must be an async function"),
    ],
)
def test_bad_module_attr(plugin: Path, spec: str, message: str) -> None:
    with pytest.raises(HandlerNotFoundError, match=message):
        resolve_handler(spec)


async def test_server_runs_a_plugin_found_by_name(
    start: Start, plugin: Path, client_config: ClientConfig
) -> None:
    [address] = await start(handler="shout")
    stream = await open_client(address, client_config)
    await stream.send_all(b"quiet")
    assert await stream.receive_some(100) == b"QUIET"
    await stream.aclose()
