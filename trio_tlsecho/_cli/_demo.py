"""``demo``: a server on a free port, and clients that show what mutual TLS does.

Each step prints one line saying what happened.  Exit status 0 means every
expectation held: good clients are echoed byte for byte, bad ones are refused.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from .._client import echo_once, open_client
from .._config import ClientConfig, ServerConfig
from .._exceptions import ClientError
from .._handlers import RECEIVE_SIZE
from .._net import Address
from .._server import serve
from .._tls import TLSFiles, describe_tls_error, make_dev_pki

_CONCURRENT = 8


async def run_demo(certs: Path) -> int:
    client = ClientConfig(tls=TLSFiles.from_dir(certs, "client"))
    failures = 0

    def report(ok: bool, text: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {text}", flush=True)

    async with trio.open_nursery() as nursery:
        server = ServerConfig(tls=TLSFiles.from_dir(certs, "server"), listen=["127.0.0.1:0"])
        [address] = await nursery.start(serve, server)
        print(f"demo server listening on {address} (certificates from {certs})", flush=True)

        r = await echo_once(address, client, os.urandom(5 * 1024 + 35))
        report(
            r.mutual is not False,
            f"{r.sent} random bytes echoed and verified over {r.tls_version} {r.cipher};"
            f" server is {r.server.subject}",
        )

        sizes = [1, 100, 1000, 16 * 1024, 64 * 1024, 100_000, 1 << 20, 3]
        results: list[int] = []

        async def one(size: int) -> None:
            results.append((await echo_once(address, client, os.urandom(size))).received)

        async with trio.open_nursery() as clients:
            for size in sizes[:_CONCURRENT]:
                clients.start_soon(one, size)
        report(
            sorted(results) == sorted(sizes),
            f"{len(results)} concurrent clients ({min(sizes)} B to {max(sizes)} B) all verified",
        )

        await _expect_refusal(report, "client without a certificate", lambda: _no_cert(address, certs))
        with tempfile.TemporaryDirectory() as other:
            make_dev_pki(other)
            stranger = ClientConfig(
                tls=TLSFiles(
                    cert=Path(other, "client.pem"), key=Path(other, "client.key"), ca=certs / "ca.pem"
                )
            )
            await _expect_refusal(
                report,
                "client with a certificate from another CA",
                lambda: echo_once(address, stranger, b"let me in"),
            )
        nursery.cancel_scope.cancel()
    print("demo " + ("passed" if not failures else f"FAILED ({failures} step(s))"), flush=True)
    return 0 if not failures else 1


async def _expect_refusal(
    report: Callable[[bool, str], None], who: str, attempt: Callable[[], Awaitable[object]]
) -> None:
    try:
        await attempt()
    except ClientError as exc:
        report(True, f"{who} refused: {exc}")
    else:
        report(False, f"{who} was served, but should have been refused")


async def _no_cert(address: Address, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    config = ClientConfig(tls=TLSFiles.from_dir(certs, "client"))
    stream = await open_client(address, config, ssl_context=ctx)
    try:
        await stream.send_all(b"hello?")
        await stream.receive_some(RECEIVE_SIZE)
    except trio.BrokenResourceError as exc:
        raise ClientError(describe_tls_error(exc)) from None
    finally:
        await trio.aclose_forcefully(stream)
