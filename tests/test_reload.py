"""Revocation (CRL) and reloading certificates, key, CA and CRL while serving."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import signal
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from trio_tlsecho import (
    Address,
    CertificateError,
    ClientConfig,
    ClientError,
    EchoResult,
    ServerConfig,
    ServerMetrics,
    TLSFiles,
    echo_once,
    make_dev_pki,
    open_client,
    serve,
)
from trio_tlsecho._server import _serve as _server
from trio_tlsecho._tls import revoke

from .logs import ServerLog
from .processes import ServeProcess, run_cli
from .test_tls import encrypt_key


def _serial(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def test_revoke_writes_a_crl_signed_by_the_ca(certs: Path) -> None:
    crl_path = revoke(certs, ["alice"])
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert [entry.serial_number for entry in crl] == [_serial(certs / "alice.pem")]
    # Revoking more keeps what was revoked before, and numbers the new CRL.
    revoke(certs, ["client"])
    crl2 = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert {entry.serial_number for entry in crl2} == {
        _serial(certs / "alice.pem"),
        _serial(certs / "client.pem"),
    }
    number = crl2.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoke_unknown_name(certs: Path) -> None:
    with pytest.raises(CertificateError, match=r"cannot revoke 'mallory': no certificate"):
        revoke(certs, ["mallory"])


def test_revoke_certificate_of_another_ca(certs: Path, other_pki: Path) -> None:
    shutil.copy(other_pki / "client.pem", certs / "stranger.pem")
    with pytest.raises(CertificateError, match="it was not issued by"):
        revoke(certs, ["stranger"])


def _config(certs: Path, **kw: object) -> ServerConfig:
    return ServerConfig(tls=TLSFiles.from_dir(certs, "server"), listen=["127.0.0.1:0"], **kw)  # type: ignore[arg-type]


async def test_revoked_client_is_refused(
    nursery: trio.Nursery, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    revoke(certs, ["alice"])
    [address] = await nursery.start(serve, _config(certs, crl=certs / "crl.pem"))
    with pytest.raises(ClientError, match="revoked"):
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(certs, "alice")), b"alice")
    assert "certificate verify failed: revoked" in caplog.text
    assert (
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(certs, "client")), b"ok")
    ).received == 2


async def test_an_expired_crl_is_counted_as_the_servers_problem(
    nursery: trio.Nursery, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(days=2))
        .next_update(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (certs / "crl.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    metrics = ServerMetrics()
    [address] = await nursery.start(
        functools.partial(serve, _config(certs, crl=certs / "crl.pem"), metrics=metrics)
    )
    with pytest.raises(ClientError):
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(certs, "client")), b"x")
    with trio.fail_after(10):
        while metrics.handshake_failures == 0:
            await trio.testing.wait_all_tasks_blocked()
    assert {result: n for result, n in metrics.handshakes.items() if n} == {"crl": 1}
    assert "certificate verify failed: the CRL has expired" in caplog.text


def test_crl_file_errors(certs: Path) -> None:
    from trio_tlsecho import server_context

    with pytest.raises(CertificateError, match="CRL file not found"):
        server_context(_config(certs, crl=certs / "missing.pem"))
    with pytest.raises(CertificateError, match="no PEM certificate revocation list"):
        server_context(_config(certs, crl=certs / "ca.pem"))
    # The CRL loader also trusts certificates it finds: one pasted in would become a CA.
    revoke(certs, ["alice"])
    crl_and_cert = certs / "crl-and-cert.pem"
    crl_and_cert.write_bytes((certs / "crl.pem").read_bytes() + (certs / "client.pem").read_bytes())
    with pytest.raises(CertificateError, match="also holds certificates; give the CRL alone"):
        server_context(_config(certs, crl=crl_and_cert))


class Reloads:
    """A reload trigger under the test's control; ``reload()`` returns once it is done."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[None](0)

    async def reload(self) -> None:
        await self.send.send(None)  # returns once the server has taken it...
        await trio.testing.wait_all_tasks_blocked()  # ...and this once it is waiting again


async def start_reloadable(nursery: trio.Nursery, certs: Path, **kw: object) -> tuple[Address, Reloads]:
    """A server on *certs* in *nursery*, and the trigger that reloads it."""
    reloads = Reloads()
    [address] = await nursery.start(
        lambda task_status: serve(
            _config(certs, **kw), reload_trigger=reloads.receive.receive, task_status=task_status
        )
    )
    return address, reloads


@attrs.frozen
class Reloadable:
    """A server on ``certs``, the trigger that reloads it, and the client of ``certs``."""

    address: Address
    reloads: Reloads
    client: ClientConfig

    async def echo(self, data: bytes) -> EchoResult:
        """*data* echoed for the client, on a new connection."""
        return await echo_once(self.address, self.client, data)


@pytest.fixture
async def reloadable(nursery: trio.Nursery, certs: Path) -> Reloadable:
    """A server on ``certs`` in the test's nursery, whose reloads the test triggers."""
    address, reloads = await start_reloadable(nursery, certs)
    return Reloadable(address, reloads, ClientConfig(tls=TLSFiles.from_dir(certs, "client")))


async def test_reload_swaps_certificates_for_new_connections_only(
    reloadable: Reloadable, certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = await reloadable.echo(b"before")
    steady = await open_client(reloadable.address, reloadable.client)

    # A new server certificate from the same CA, written where the server reads it.
    fresh = tmp_path / "fresh"
    make_dev_pki(fresh, server_names=["localhost", "127.0.0.1"])  # a new CA: trust it too
    shutil.copy(fresh / "server.pem", certs / "server.pem")
    shutil.copy(fresh / "server.key", certs / "server.key")
    (certs / "ca.pem").write_bytes((certs / "ca.pem").read_bytes() + (fresh / "ca.pem").read_bytes())
    await reloadable.reloads.reload()
    assert "reloaded certificate, key, CA for new connections" in caplog.text

    new_client = ClientConfig(
        tls=TLSFiles(cert=certs / "client.pem", key=certs / "client.key", ca=fresh / "ca.pem")
    )
    after = await echo_once(reloadable.address, new_client, b"after")
    assert after.server.fingerprint_sha256 != before.server.fingerprint_sha256
    # The connection made before the reload goes on with what it had.
    await steady.send_all(b"still")
    assert await steady.receive_some(10) == b"still"
    await steady.aclose()


async def test_broken_reload_keeps_the_old_configuration(
    reloadable: Reloadable, certs: Path, log: ServerLog
) -> None:
    before = await reloadable.echo(b"before")
    shutil.copy(certs / "client.key", certs / "server.key")  # a key that does not match
    await reloadable.reloads.reload()
    [line] = log.messages("reload failed")
    assert line.startswith("reload failed, still using the previous certificates: private key")
    after = await reloadable.echo(b"after")
    assert after.server.fingerprint_sha256 == before.server.fingerprint_sha256


async def test_reload_with_an_encrypted_key_or_an_unforeseen_error_keeps_serving(
    reloadable: Reloadable, certs: Path, log: ServerLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await reloadable.echo(b"before")
    encrypt_key(certs / "server.key")
    await reloadable.reloads.reload()

    def unforeseen(config: ServerConfig) -> ssl.SSLContext:
        raise RuntimeError("something no one thought of")

    monkeypatch.setattr(_server, "server_context", unforeseen)
    await reloadable.reloads.reload()
    lines = log.messages("reload failed")
    assert len(lines) == 2
    assert "server.key is encrypted: give an unencrypted key" in lines[0]
    assert lines[1].endswith("previous certificates: RuntimeError: something no one thought of")
    after = await reloadable.echo(b"after")
    assert after.server.fingerprint_sha256 == before.server.fingerprint_sha256


async def test_reload_picks_up_a_new_crl(nursery: trio.Nursery, certs: Path) -> None:
    alice = ClientConfig(tls=TLSFiles.from_dir(certs, "alice"))
    address, reloads = await start_reloadable(nursery, certs, crl=certs / "crl.pem")
    assert (await echo_once(address, alice, b"1")).received == 1  # the initial CRL is empty
    revoke(certs, ["alice"])
    await reloads.reload()
    with pytest.raises(ClientError, match="revoked"):
        await echo_once(address, alice, b"2")


def test_sighup_reloads_and_revokes_via_cli(certs: Path, tmp_path: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", "--crl", "certs/crl.pem", cwd=tmp_path) as server:
        alice = (
            "client",
            "--connect",
            str(server.address),
            "--cert",
            "certs/alice.pem",
            "--key",
            "certs/alice.key",
        )
        assert run_cli(*alice, cwd=tmp_path).returncode == 0
        revoked = run_cli("certs", "--revoke", "alice", cwd=tmp_path)
        assert revoked.stdout == "revoked alice: wrote certs/crl.pem\n"
        server.signal(signal.SIGHUP)
        assert server.stderr.wait_for("reloaded certificate")
        refused = run_cli(*alice, cwd=tmp_path)
        assert refused.returncode == 1
        assert "revoked" in refused.stderr
        code, err = server.stop()
    assert code == 0, err


async def test_reload_ends_outstanding_session_tickets(nursery: trio.Nursery, certs: Path) -> None:
    from trio_tlsecho import LoadConfig, client_context
    from trio_tlsecho._load._transport import ClientConnection, Target

    address, reloads = await start_reloadable(nursery, certs, session_tickets=True)
    client = ClientConfig(tls=TLSFiles.from_dir(certs, "client"))
    target = await Target.resolve(LoadConfig(address=address, client=client, requests=1))
    ctx = client_context(client)

    async def connect(session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
        conn = await ClientConnection.open(target, ctx, session)
        await conn.send_all(memoryview(b"x"))
        assert await conn.receive_into(memoryview(bytearray(1))) == 1  # the ticket came before the echo
        resumed, session = conn.resumed, conn.session
        conn.close()
        return resumed, session

    _, session = await connect(None)
    resumed, session = await connect(session)
    assert resumed  # tickets work...
    await reloads.reload()
    resumed, _ = await connect(session)
    assert not resumed  # ...until a reload: a revoked client cannot ride an old ticket
