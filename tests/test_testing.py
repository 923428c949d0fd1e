"""``trio_tlsecho.testing``: what the ``tlsecho`` fixture gives a handler's author.

Tested here through :class:`TLSEcho`, which is what the fixture yields; the fixture
itself, enabled with ``-p trio_tlsecho.testing``, runs the README's example in
test_readme.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tlsecho import Connection, Handler, PeerIdentity, echo
from trio_tlsecho.testing import HANDLER_EXIT_TIMEOUT, MemoryTLSStream, TLSEcho


@pytest.fixture
async def tlsecho(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[TLSEcho]:
    helper = TLSEcho(nursery, tmp_path / "tlsecho")
    yield helper
    await helper.aclose()


async def greeter(conn: Connection) -> None:
    await conn.stream.send_all(b"hello, " + (conn.identity.common_name or "?").encode())


async def _read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    got = bytearray()
    while data := await stream.receive_some(100):
        got += data
    return bytes(got)


@pytest.mark.parametrize("engine", ["trio", "socket"])
async def test_serve_and_connect_give_a_real_mutual_tls_conversation(tlsecho: TLSEcho, engine: str) -> None:
    address = await tlsecho.serve(greeter, engine=engine)
    assert address.host == "127.0.0.1"
    assert address.port != 0
    client = await tlsecho.connect(address, "bob")
    assert await _read_to_end(client) == b"hello, bob"  # then close_notify: b"", not a cut
    assert client.version() == "TLSv1.3"


async def test_serve_applies_the_config_overrides(tlsecho: TLSEcho) -> None:
    seen: list[Connection] = []

    async def record(conn: Connection) -> None:
        seen.append(conn)

    address = await tlsecho.serve(record, min_tls_version="1.3", engine="socket")
    client = await tlsecho.connect(address)
    assert await _read_to_end(client) == b""
    [conn] = seen
    assert conn.tls_version == "TLSv1.3"
    assert type(conn.stream).__name__ == "SSLSocketStream"


async def test_memory_gives_the_handler_the_identity_a_real_connection_would(tlsecho: TLSEcho) -> None:
    seen: list[Connection] = []

    async def record(conn: Connection) -> None:
        seen.append(conn)

    address = await tlsecho.serve(record)
    await _read_to_end(await tlsecho.connect(address, "alice"))
    async with tlsecho.memory(record, common_name="alice") as client:
        assert await _read_to_end(client) == b""
    real, memory = seen
    assert memory.identity == real.identity
    assert memory.identity.subject == "CN=alice"
    assert memory.identity.sans == ("DNS:alice",)
    assert "O=trio_tlsecho testing" in memory.identity.issuer
    assert (memory.tls_version, memory.cipher) == (real.tls_version, real.cipher)


async def test_memory_takes_any_san(tlsecho: TLSEcho) -> None:
    seen: list[PeerIdentity] = []

    async def record(conn: Connection) -> None:
        seen.append(conn.identity)
        der = conn.stream.getpeercert(binary_form=True)
        assert hashlib.sha256(der).hexdigest() == conn.identity.fingerprint_sha256
        assert conn.stream.getpeercert()["subjectAltName"][1] == ("URI", "spiffe://example.org/app")

    sans = ("DNS:app.example.org", "URI:spiffe://example.org/app", "IP:10.0.0.7", "email:ops@example.org")
    async with tlsecho.memory(record, common_name="app", sans=sans):
        pass
    [identity] = seen
    assert identity.common_name == "app"
    assert identity.sans == (
        "DNS:app.example.org",
        "URI:spiffe://example.org/app",
        "IP Address:10.0.0.7",
        "email:ops@example.org",
    )


async def test_memory_refuses_a_san_it_cannot_read(tlsecho: TLSEcho) -> None:
    with pytest.raises(ValueError, match=r"bad SAN 'alice': expected DNS:NAME, IP:ADDRESS"):
        async with tlsecho.memory(greeter, sans=["alice"]):
            pass


async def test_memory_runs_in_virtual_time_and_counts_bytes(
    tlsecho: TLSEcho, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[Connection] = []

    async def slow_echo(conn: Connection) -> None:
        seen.append(conn)
        data = await conn.stream.receive_some(100)
        await trio.sleep(3600)
        await conn.stream.send_all(data)

    async with tlsecho.memory(slow_echo) as client:
        start = trio.current_time()
        await client.send_all(b"ping")
        assert await client.receive_some(100) == b"ping"
        assert trio.current_time() - start == 3600
    [conn] = seen
    assert isinstance(conn.stream, MemoryTLSStream)
    assert (conn.stream.received, conn.stream.sent) == (4, 4)


async def test_memory_raises_what_the_handler_raised(tlsecho: TLSEcho) -> None:
    async def buggy(conn: Connection) -> None:
        await conn.stream.receive_some(100)
        raise KeyError("the bug")

    with pytest.raises(KeyError, match="the bug"):
        async with tlsecho.memory(buggy) as client:
            await client.send_all(b"x")
            # The handler's failure ends the connection without a reply.
            assert await client.receive_some(100) == b""


async def test_memory_fails_a_handler_that_outlives_its_client(
    tlsecho: TLSEcho, autojump_clock: trio.testing.MockClock
) -> None:
    async def stubborn(conn: Connection) -> None:
        await trio.sleep_forever()

    start = trio.current_time()
    with pytest.raises(AssertionError, match="still running 10s after the client closed"):
        async with tlsecho.memory(stubborn):
            pass
    assert trio.current_time() - start == HANDLER_EXIT_TIMEOUT


async def test_begin_stop_reaches_servers_and_memory_connections(
    tlsecho: TLSEcho, autojump_clock: trio.testing.MockClock
) -> None:
    address = await tlsecho.serve(echo)
    client = await tlsecho.connect(address)
    await client.send_all(b"x")
    assert await client.receive_some(10) == b"x"
    async with tlsecho.memory(echo) as in_memory:
        await in_memory.send_all(b"y")
        assert await in_memory.receive_some(10) == b"y"
        tlsecho.begin_stop()
        # The built-in echo finishes at a boundary: both clients see a clean end.
        assert await in_memory.receive_some(10) == b""
        assert await client.receive_some(10) == b""


async def test_serve_passes_handler_options_to_a_factory(tlsecho: TLSEcho) -> None:
    def repeat(*, times: str) -> Handler:
        async def handler(conn: Connection) -> None:
            data = await conn.stream.receive_some(100)
            await conn.stream.send_all(data * int(times))

        return handler

    address = await tlsecho.serve(repeat, handler_options={"times": "3"})
    client = await tlsecho.connect(address)
    await client.send_all(b"ab")
    assert await _read_to_end(client) == b"ababab"
