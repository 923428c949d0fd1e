"""The built-in handlers, over real mutual TLS."""

from __future__ import annotations

import trio

from trio_tlsecho import Address, ClientConfig, Connection, discard, open_client

from .conftest import Start, receive_until


async def test_echo_answers_each_chunk(server: Address, client_config: ClientConfig) -> None:
    stream = await open_client(server, client_config)
    for chunk in (b"a", b"bc" * 10_000, b"d"):
        await stream.send_all(chunk)
        assert await receive_until(stream, len(chunk)) == chunk
    await stream.aclose()


async def test_discard_consumes_everything_until_close(start: Start, client_config: ClientConfig) -> None:
    finished = trio.Event()

    async def watched(conn: Connection) -> None:
        await discard(conn)
        finished.set()

    [address] = await start(handler=watched)
    stream = await open_client(address, client_config)
    with trio.fail_after(30):
        # Far more than the socket buffers hold: send_all only returns if the server reads.
        await stream.send_all(b"x" * (8 << 20))
        await stream.aclose()  # close_notify: discard sees EOF and returns
        await finished.wait()
