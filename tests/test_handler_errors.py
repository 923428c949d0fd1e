"""A handler's exception is a bug in the handler: logged at ERROR with its traceback.

A peer's fault (a reset, a refused certificate) stays one line without one.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path

import trio

from trio_tlsecho import ClientConfig, ClientError, Connection, echo_once, open_client

from .conftest import Start
from .logs import ServerLog
from .processes import ServeProcess, run_cli


async def _buggy_helper(data: bytes) -> None:
    raise ValueError(f"boom on {data!r}")


async def buggy(conn: Connection) -> None:
    await _buggy_helper(await conn.stream.receive_some(100))


async def two_bugs(conn: Connection) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_buggy_helper, b"one")
        nursery.start_soon(_buggy_helper, b"two")


def _formatted(record: logging.LogRecord) -> str:
    assert record.exc_info is not None, "logged without its traceback"
    return "".join(traceback.format_exception(*record.exc_info))


async def test_a_handler_exception_is_logged_with_its_traceback(
    start: Start, client_config: ClientConfig, log: ServerLog
) -> None:
    [address] = await start(handler=buggy)
    # The connection ends without an echo: what the client sees is not the point here.
    with contextlib.suppress(ClientError):
        await echo_once(address, client_config, b"x")
    line = await log.wait_for("handler error: ValueError: boom on b'x'")
    [record] = log.find(line)
    assert record.levelno == logging.ERROR
    text = _formatted(record)
    # Where the bug is: the handler's own frames, down to the line that raised.
    assert "in buggy" in text
    assert "in _buggy_helper" in text
    assert 'raise ValueError(f"boom on {data!r}")' in text


async def test_each_error_of_a_handler_group_keeps_its_traceback(
    start: Start, client_config: ClientConfig, log: ServerLog
) -> None:
    [address] = await start(handler=two_bugs)
    with contextlib.suppress(ClientError):
        await echo_once(address, client_config, b"x")
    line = await log.wait_for("handler error: ValueError: boom on b'")
    [record] = log.find(line)
    text = _formatted(record)
    assert "boom on b'one'" in text
    assert "boom on b'two'" in text
    assert text.count("in _buggy_helper") == 2


async def test_a_peer_fault_stays_one_line_without_a_traceback(
    start: Start, client_config: ClientConfig, log: ServerLog
) -> None:
    [address] = await start()
    stream = await open_client(address, client_config)
    await stream.send_all(b"x")
    assert await stream.receive_some(10) == b"x"
    port = stream.transport_stream.socket.getsockname()[1]
    await trio.aclose_forcefully(stream)  # no close_notify: a cut connection
    await log.wait_for("connection lost", about=port)
    assert not [r for r in log.records if r.exc_info]
    assert log.problems() == []


def test_the_serve_log_shows_the_traceback(tmp_path: Path, certs: Path) -> None:
    (tmp_path / "buggy_handler.py").write_text(
        "async def handler(conn):\n"
        "    data = await conn.stream.receive_some(100)\n"
        "    raise ValueError('boom ' + data.decode())\n"
    )
    args = ("--listen", "127.0.0.1:0", "--handler", "buggy_handler:handler")
    with ServeProcess(*args, cwd=tmp_path) as server:
        client = run_cli("client", "--connect", str(server.address), "--message", "hi", cwd=tmp_path)
        assert client.returncode == 1, client.stderr
        assert server.stderr.wait_for("handler error: ValueError: boom hi")
        code, err = server.stop()
    assert code == 0, err
    after = err[err.index("handler error: ValueError: boom hi") :]
    assert "Traceback (most recent call last):" in after
    assert 'buggy_handler.py", line 3, in handler' in after
    assert "SIGTERM received" in after  # the server went on after it
