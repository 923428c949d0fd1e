"""``echo_once`` (the ``client`` command): every way an echo can be wrong is one clear error."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable

import pytest
import trio.testing

from trio_tlsecho import ClientConfig, ClientError, Connection, EchoMismatchError, discard, echo_once
from trio_tlsecho._exceptions import connect_failure

from .conftest import Start

#: What an error says when the reply suggests a server that is not an echo at all.
NOT_AN_ECHO = re.escape(" (not an echo server? client --expect any shows any reply)") + "$"


def answering(reply: Callable[[bytes], bytes]) -> Callable[[Connection], object]:
    """A handler that reads one whole 10-byte message and sends ``reply(message)``."""

    async def handler(conn: Connection) -> None:
        got = b""
        while len(got) < 10 and (data := await conn.stream.receive_some(65536)):
            got += data
        await conn.stream.send_all(reply(got))
        await conn.stream.receive_some(65536)  # until the client is done

    return handler


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (lambda m: m[:3] + b"X" + m[4:], EchoMismatchError, "echo differs from what was sent at byte 3$"),
        (
            lambda m: b"hello " + m,
            EchoMismatchError,
            "echo differs from what was sent at byte 0" + NOT_AN_ECHO,
        ),
        (
            lambda m: m + b"!",
            EchoMismatchError,
            "echo longer than what was sent: 11 bytes for 10" + NOT_AN_ECHO,
        ),
    ],
    ids=["different", "another-reply", "longer"],
)
async def test_a_wrong_echo_is_one_error(
    start: Start,
    client_config: ClientConfig,
    reply: Callable[[bytes], bytes],
    error: type[ClientError],
    message: str,
) -> None:
    [address] = await start(handler=answering(reply))
    with pytest.raises(error, match=message):
        await echo_once(address, client_config, b"0123456789")


async def test_a_short_echo_is_one_error(start: Start, client_config: ClientConfig) -> None:
    async def short(conn: Connection) -> None:
        await conn.stream.receive_some(65536)
        await conn.stream.send_all(b"012")
        await conn.stream.aclose()  # with close_notify: a clean end, too early

    [address] = await start(handler=short)
    with pytest.raises(ClientError, match="short echo: server closed after 3 of 10 bytes"):
        await echo_once(address, client_config, b"0123456789")


async def test_no_reply_at_all_suggests_another_kind_of_server(
    start: Start, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    [address] = await start(handler=discard)
    with pytest.raises(ClientError, match=r"no complete echo within 5s \(0 of 10 bytes back\)" + NOT_AN_ECHO):
        await echo_once(address, client_config, b"0123456789", timeout=5)


def _summary(*inner: OSError) -> OSError:
    """As ``open_tcp_stream`` raises: a summary whose cause is a group of the real ones."""
    summary = OSError("all attempts to connect to h:1 failed")
    summary.__cause__ = ExceptionGroup("attempts", list(inner))
    return summary


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (_summary(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
         "connection refused (is the server running?)"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"),
         "no such socket (is the server running?)"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
         "unknown host (Name or service not known)"),
        (_summary(OSError(errno.ENETUNREACH, "Network is unreachable")), "Network is unreachable"),
        (OSError("no errno at all"), "no errno at all"),
    ],
)  # fmt: skip
def test_a_failed_connection_is_said_in_one_wording(exc: OSError, words: str) -> None:
    # The client and the load generator both say it this way.
    assert connect_failure(exc) == words
