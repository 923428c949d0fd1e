"""``echo_once`` (the ``client`` command): every way an echo can be wrong is one clear error."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trio_tlsecho import ClientConfig, ClientError, Connection, EchoMismatchError, echo_once

from .conftest import Start


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
        (lambda m: m[:3] + b"X" + m[4:], EchoMismatchError, "echo differs from what was sent at byte 3"),
        (lambda m: m + b"!", EchoMismatchError, "echo longer than what was sent: 11 bytes for 10"),
    ],
    ids=["different", "longer"],
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
