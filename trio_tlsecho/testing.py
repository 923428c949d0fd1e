"""Test helpers for handler authors: a pytest plugin with one fixture, ``tlsecho``.

Enable it with ``pytest -p trio_tlsecho.testing`` (or ``pytest_plugins =
["trio_tlsecho.testing"]`` in your top ``conftest.py``).  It builds on pytest-trio:
the tests that use it are trio tests (``trio_mode = true``, or
``@pytest.mark.trio``).  Each test gets a fresh CA (trustme) and certificates::

    async def test_greets(tlsecho):
        address = await tlsecho.serve(greeter)          # a real server, in the test's nursery
        client = await tlsecho.connect(address, "bob")  # verified mTLS, certificate CN=bob
        assert await client.receive_some(100) == b"hello, bob"

    async def test_greets_in_memory(tlsecho, autojump_clock):
        async with tlsecho.memory(greeter, common_name="alice") as client:
            assert await client.receive_some(100) == b"hello, alice"

``memory`` runs the handler on an in-memory stream (no sockets, no TLS: it works in
virtual time) with a :class:`~trio_tlsecho.Connection` whose identity comes from a
real certificate of the test's CA.  When the ``async with`` block ends, the client
end is closed and the handler must finish; an exception the handler raised is
raised there, so that a bug in the handler fails the test that found it.

This module uses only the package's public API; it is public itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import ipaddress
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from trio_tlsecho import (
    Address,
    ClientConfig,
    Connection,
    Handler,
    PeerIdentity,
    ServerConfig,
    TLSFiles,
    TLSStream,
    open_client,
    serve,
)

__all__ = ["MemoryTLSStream", "TLSEcho", "tlsecho"]

#: What an in-memory connection says it negotiated.
MEMORY_TLS_VERSION = "TLSv1.3"
MEMORY_CIPHER = "TLS_AES_256_GCM_SHA384"

#: After ``memory``'s block ends (its client end closed), how long the handler has to
#: return.  Virtual seconds under ``autojump_clock``.
HANDLER_EXIT_TIMEOUT = 10.0

# getpeercert()'s names for the attributes a certificate name usually holds, and the
# short forms PeerIdentity's strings use (as the server's identity does).
_NAMES = {
    x509.NameOID.COMMON_NAME: ("commonName", "CN"),
    x509.NameOID.ORGANIZATION_NAME: ("organizationName", "O"),
    x509.NameOID.ORGANIZATIONAL_UNIT_NAME: ("organizationalUnitName", "OU"),
    x509.NameOID.COUNTRY_NAME: ("countryName", "C"),
}
# A SAN as PeerIdentity spells it ("DNS:x"), and its getpeercert() kind.
_SAN_KINDS = {"DNS": "DNS", "IP": "IP Address", "IP Address": "IP Address", "URI": "URI", "email": "email"}


@attrs.frozen
class _Issued:
    """A client certificate of the test's CA, as files and as the server would see it."""

    files: TLSFiles
    der: bytes
    #: As ``ssl.SSLSocket.getpeercert()`` returns it.
    info: Mapping[str, Any]
    identity: PeerIdentity


class MemoryTLSStream(TLSStream):
    """A :class:`~trio_tlsecho.TLSStream` over an in-memory stream: what ``memory`` gives a handler.

    No TLS: the bytes pass as they are, counted as the engines count them; the peer
    certificate, cipher and version are those a real connection would report.
    """

    __slots__ = ("_certificate", "_info", "received", "sent", "transport")

    send_progress = 0

    def __init__(self, transport: trio.abc.Stream, certificate: bytes, info: Mapping[str, Any]) -> None:
        self.transport = transport
        self._certificate = certificate
        self._info = info
        self.received = 0
        self.sent = 0

    async def do_handshake(self) -> None:
        await trio.lowlevel.checkpoint()

    async def refuse(self) -> None:
        await trio.aclose_forcefully(self.transport)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.transport.aclose()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._certificate if binary_form else dict(self._info)

    def cipher(self) -> tuple[str, str, int] | None:
        return (MEMORY_CIPHER, MEMORY_TLS_VERSION, 256)

    def version(self) -> str | None:
        return MEMORY_TLS_VERSION

    def selected_alpn_protocol(self) -> str | None:
        return None

    @property
    def session_reused(self) -> bool:
        return False


class TLSEcho:
    """What the ``tlsecho`` fixture gives: servers, clients and in-memory connections of one test.

    Everything it starts runs in *nursery* (the test's) and is stopped with it;
    certificates are written to *directory*.
    """

    def __init__(self, nursery: trio.Nursery, directory: Path) -> None:
        self._nursery = nursery
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        #: The test's CA: every server and client certificate here is its.
        self.ca = trustme.CA(organization_name="trio_tlsecho testing")
        self.ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        server = self.ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
        server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
        #: The servers' certificate, key and CA (``ServerConfig.tls``).
        self.server_files = TLSFiles(
            cert=directory / "server.pem", key=directory / "server.pem", ca=directory / "ca.pem"
        )
        self._issued: dict[tuple[str, tuple[str, ...]], _Issued] = {}
        self._stop = trio.Event()
        self._connections: list[Connection] = []
        self._clients: list[trio.abc.AsyncResource] = []
        self._ports = itertools.count(50000)

    async def serve(self, handler: Handler | str, **config_overrides: Any) -> Address:
        """Start a server for *handler* on 127.0.0.1 (a free port) and return its address.

        *config_overrides* are :class:`~trio_tlsecho.ServerConfig` fields
        (``engine="socket"``, ``idle_timeout=5``, ...).  It runs until the test ends,
        or stops gracefully at :meth:`begin_stop`.
        """
        config = ServerConfig(
            **{"tls": self.server_files, "listen": ["127.0.0.1:0"], "handler": handler, **config_overrides}
        )
        addresses: list[Address] = await self._nursery.start(
            functools.partial(serve, config, shutdown_trigger=self._stop.wait)
        )
        return addresses[0]

    async def connect(
        self, address: Address, common_name: str = "client"
    ) -> trio.SSLStream[trio.SocketStream]:
        """A client connected to *address*, the handshake done, with a certificate for *common_name*.

        Closed at the end of the test if the test has not closed it.
        """
        files = self.issue(common_name).files
        stream = await open_client(address, ClientConfig(tls=files))
        self._clients.append(stream)
        return stream

    @contextlib.asynccontextmanager
    async def memory(
        self, handler: Handler, common_name: str = "alice", sans: Iterable[str] | None = None
    ) -> AsyncIterator[trio.abc.Stream]:
        """The client end of an in-memory stream whose server end runs *handler*.

        The handler's :class:`~trio_tlsecho.Connection` carries the identity of a
        certificate for *common_name* with *sans* (``"DNS:name"``, ``"IP:10.0.0.7"``,
        ``"URI:spiffe://example.org/app"``, ``"email:a@example.org"``; default
        ``DNS:common_name``).  When the block ends the client end is closed; the
        handler then has ``HANDLER_EXIT_TIMEOUT`` seconds to return, and what it
        raised is raised here.
        """
        issued = self.issue(common_name, sans)
        client, server_end = trio.testing.memory_stream_pair()
        conn = Connection(
            stream=MemoryTLSStream(server_end, issued.der, issued.info),
            peer_address=("127.0.0.1", next(self._ports)),
            identity=issued.identity,
            tls_version=MEMORY_TLS_VERSION,
            cipher=MEMORY_CIPHER,
        )
        if self._stop.is_set():
            conn.stopping.set()
        self._connections.append(conn)
        run = _HandlerRun(handler, conn)
        self._nursery.start_soon(run.run)
        try:
            yield client
        except BaseException:
            run.scope.cancel()
            raise
        await client.aclose()
        await run.finished()

    def begin_stop(self) -> None:
        """Begin a graceful stop: of every server :meth:`serve` started, and of every
        in-memory connection (``conn.stopping`` is set)."""
        self._stop.set()
        for conn in self._connections:
            conn.stopping.set()

    def issue(self, common_name: str, sans: Iterable[str] | None = None) -> _Issued:
        """A client certificate of the test's CA for *common_name* (written to ``directory``)."""
        names = tuple(sans) if sans is not None else (f"DNS:{common_name}",)
        key = (common_name, names)
        if key not in self._issued:
            self._issued[key] = _issue(self.ca, self.directory, common_name, names, len(self._issued))
        return self._issued[key]

    async def aclose(self) -> None:
        """Close the clients the test left open (the fixture does, after the test)."""
        for client in self._clients:
            await trio.aclose_forcefully(client)


class _HandlerRun:
    """One handler on one in-memory connection, closing it as the server's pipeline would."""

    def __init__(self, handler: Handler, conn: Connection) -> None:
        self.handler, self.conn = handler, conn
        self.scope = trio.CancelScope()
        self.failure: Exception | None = None
        self.done = trio.Event()

    async def run(self) -> None:
        try:
            with self.scope:
                try:
                    await self.handler(self.conn)
                except Exception as exc:  # raised in the test by finished(): it is the test's finding
                    self.failure = exc
                    await trio.aclose_forcefully(self.conn.stream)
                else:
                    await self.conn.stream.aclose()
        finally:
            self.done.set()

    async def finished(self) -> None:
        with trio.move_on_after(HANDLER_EXIT_TIMEOUT):
            await self.done.wait()
        if not self.done.is_set():
            self.scope.cancel()
            raise AssertionError(
                f"the handler was still running {HANDLER_EXIT_TIMEOUT:g}s after the client closed its end"
            )
        if self.failure is not None:
            raise self.failure


def _issue(ca: trustme.CA, directory: Path, common_name: str, sans: tuple[str, ...], serial: int) -> _Issued:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # trustme's default key type
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    kinds = [_san(text) for text in sans]
    if kinds:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general for general, _ in kinds]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = f"client-{serial}"
    pem, key_pem = directory / f"{stem}.pem", directory / f"{stem}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    not_after = cert.not_valid_after_utc.strftime("%b %e %H:%M:%S %Y GMT")
    info: dict[str, Any] = {
        "subject": _rdns(subject),
        "issuer": _rdns(ca_cert.subject),
        "notAfter": not_after,
        "subjectAltName": tuple(pair for _, pair in kinds),
    }
    identity = PeerIdentity(
        subject=_format(subject),
        issuer=_format(ca_cert.subject),
        common_name=common_name,
        sans=tuple(f"{kind}:{value}" for _, (kind, value) in kinds),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        not_after=not_after,
    )
    files = TLSFiles(cert=pem, key=key_pem, ca=directory / "ca.pem")
    return _Issued(files=files, der=der, info=info, identity=identity)


def _san(text: str) -> tuple[x509.GeneralName, tuple[str, str]]:
    prefix, sep, value = text.partition(":")
    kind = _SAN_KINDS.get(prefix)
    if not sep or kind is None or not value:
        raise ValueError(f"bad SAN {text!r}: expected DNS:NAME, IP:ADDRESS, URI:URI or email:ADDRESS")
    general: x509.GeneralName
    if kind == "DNS":
        general = x509.DNSName(value)
    elif kind == "IP Address":
        address = ipaddress.ip_address(value)
        general, value = x509.IPAddress(address), str(address)
    elif kind == "URI":
        general = x509.UniformResourceIdentifier(value)
    else:
        general = x509.RFC822Name(value)
    return general, (kind, value)


def _rdns(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(
        tuple((_NAMES.get(a.oid, (a.oid.dotted_string, ""))[0], str(a.value)) for a in rdn)
        for rdn in name.rdns
    )


def _format(name: x509.Name) -> str:
    return ",".join(
        f"{_NAMES.get(a.oid, ('', a.oid.dotted_string))[1]}={a.value!s}" for rdn in name.rdns for a in rdn
    )


@pytest.fixture
async def tlsecho(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[TLSEcho]:
    """Servers, verified clients and in-memory connections for testing a handler (see :class:`TLSEcho`)."""
    helper = TLSEcho(nursery, tmp_path / "tlsecho")
    try:
        yield helper
    finally:
        await helper.aclose()
