"""Handler lookup: built-in names, the entry-point group, module:attr."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trio_tlsecho import (
    ClientConfig,
    ConfigError,
    HandlerNotFoundError,
    discard,
    echo,
    handler_names,
    open_client,
    resolve_handler,
)
from trio_tlsecho._config import HandlerOptions
from trio_tlsecho._handlers import ENTRY_POINT_GROUP

from .conftest import Start, receive_until
from .processes import PY


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

            def not_async_handler(conn):
                pass

            def repeat(*, times, sep="-"):
                # A factory: options in, the per-connection handler out.
                count = int(times)

                async def handler(conn):
                    data = await conn.stream.receive_some(1024)
                    await conn.stream.send_all(sep.encode().join([data] * count))

                return handler

            class Prefix:
                # A class factory: its instances are the handlers.

                def __init__(self, text="> "):
                    self.text = text.encode()

                async def __call__(self, conn):
                    data = await conn.stream.receive_some(1024)
                    await conn.stream.send_all(self.text + data)

            def wrong_product(**options):
                return "not a handler"

            def exploding(*, path="x"):
                open("/nonexistent/" + path)
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
        "failing = failing_plugin:handler\nrepeat = shout_plugin:repeat\n"
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
        ("shout_plugin:not_async_handler", "must be an async function taking a Connection, or a factory"),
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


# -- handler options: a factory is called once, at start-up, with them -----------------


def test_a_factory_gets_its_options_as_keywords(plugin: Path) -> None:
    handler = resolve_handler("shout_plugin:repeat", {"times": "3"})
    assert handler.__name__ == "handler"  # type: ignore[attr-defined]
    # A class is a factory; its instance (async __call__) is the handler.
    prefix = resolve_handler("shout_plugin:Prefix", {"text": "$ "})
    assert type(prefix).__name__ == "Prefix"
    assert prefix.text == b"$ "  # type: ignore[attr-defined]
    # Entry-point plugins get the same mechanism.
    assert resolve_handler("repeat", {"times": "2"}).__name__ == "handler"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("echo", {"x": "1"}, r"^handler 'echo' takes no options \(given: x\)$"),
        (
            "shout_plugin:repeat",
            {"times": "2", "bogus": "1"},
            r"^handler 'shout_plugin:repeat' has no option 'bogus' \(its options: times, sep\)$",
        ),
        (
            "shout_plugin:repeat",
            {},
            r"^handler 'shout_plugin:repeat' needs option 'times' \(--handler-option times=VALUE\)$",
        ),
        # The factory's own parse of a value (ValueError) is the user's mistake: one line.
        ("repeat", {"times": "many"}, r"^handler 'repeat': invalid literal for int\(\) .* 'many'$"),
    ],
)
def test_bad_options_are_one_line_config_errors(
    plugin: Path, spec: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_handler(spec, options)
    assert not isinstance(caught.value, HandlerNotFoundError)


def test_a_factory_that_fails_or_returns_no_handler_is_named(plugin: Path) -> None:
    with pytest.raises(
        HandlerNotFoundError, match=r"factory returned 'not a handler', not an async function"
    ):
        resolve_handler("shout_plugin:wrong_product")
    with pytest.raises(
        HandlerNotFoundError,
        match=r"^handler 'shout_plugin:exploding' failed to start: FileNotFoundError: .*/nonexistent/x"
        r".* \(at .*shout_plugin\.py:\d+\)$",
    ):
        resolve_handler("shout_plugin:exploding")


async def test_server_builds_the_handler_from_its_options(
    start: Start, plugin: Path, client_config: ClientConfig
) -> None:
    [address] = await start(handler="repeat", handler_options={"times": "3", "sep": "+"})
    stream = await open_client(address, client_config)
    await stream.send_all(b"ab")
    assert await receive_until(stream, 8) == b"ab+ab+ab"
    await stream.aclose()


async def test_bad_options_fail_serve_before_it_listens(start: Start, plugin: Path) -> None:
    with pytest.raises(ConfigError, match="has no option 'nope'"):
        await start(handler="repeat", handler_options={"times": "1", "nope": "x"})


def test_serve_refuses_bad_options_at_start_up_in_one_line(plugin: Path, certs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(plugin)}
    for options, message in [
        (["--handler-option", "times"], "argument --handler-option: handler option 'times' is not KEY=VALUE"),
        (["--handler-option", "times=1", "--handler-option", "nope=2"], "has no option 'nope'"),
        (
            ["--handler-option", "times=1", "--handler-option", "times=2"],
            "handler option times is given twice",
        ),
    ]:
        for workers in ("1", "2"):
            done = subprocess.run(
                [
                    *PY,
                    "serve",
                    "--certs",
                    str(certs),
                    "--listen",
                    "127.0.0.1:0",
                    "--handler",
                    "shout_plugin:repeat",
                    "--workers",
                    workers,
                    *options,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=plugin,
            )
            assert done.returncode == 2, done.stderr
            [line] = done.stderr.splitlines()
            assert message in line


def test_handler_options_are_strings_and_read_only() -> None:
    options = HandlerOptions([("connect-timeout", "5"), ("target", "127.0.0.1:80")])
    assert dict(options) == {"connect_timeout": "5", "target": "127.0.0.1:80"}
    # --workers pickles the config for each worker process.
    assert pickle.loads(pickle.dumps(options)) == options
    assert hash(options) == hash(HandlerOptions({"target": "127.0.0.1:80", "connect_timeout": "5"}))
    with pytest.raises(TypeError):
        options["target"] = "x"  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"handler option times must be a string .*, not 3"):
        HandlerOptions({"times": 3})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="handler option name 'a b' is not a name"):
        HandlerOptions({"a b": "1"})
