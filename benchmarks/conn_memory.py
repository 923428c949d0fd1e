"""Where an idle connection's memory goes: OpenSSL's share, apart from Python's.

    python benchmarks/conn_memory.py [--connections 500]

Opens *N* mutual-TLS connections over socket pairs in one process, completes each
handshake and one echoed byte, frees the client side and keeps only the server side:
an ``ssl.SSLSocket`` built from our server context, as ``--engine socket`` holds it.
It prints the bytes per connection that glibc's ``malloc`` holds (``mallinfo2``:
OpenSSL's state lives there) and the Python object blocks, so the part of
``benchmarks/run.py``'s (d) and (d*) rows that no Python code of ours can shrink is
measured directly.  Linux with glibc >= 2.33 only.

Twice: with clients as OpenSSL makes them by default, which send their certificate and
the CA they trust (as (d)'s do), and with clients that send their certificate only (as
Go's crypto/tls and ``tlsload`` do: (d*)).  The server keeps every certificate a client
sent for the connection's life.  (The second kind is made here by giving the client no
CA, so OpenSSL finds none to add; it then does not check the server, which a memory
measurement can do without.)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import socket
import ssl
import sys
import tempfile
from pathlib import Path

from trio_tlsecho import ClientConfig, ServerConfig, TLSFiles, client_context, make_dev_pki, server_context

WARM = 50  # connections made before measuring: first-use caches are not per connection


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def malloc_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().uordblks)


def _drive(*steps: ssl.SSLSocket) -> None:
    """Call each non-blocking handshake until all are done (two ends of a socket pair)."""
    pending = list(steps)
    for _ in range(10_000):
        for sock in list(pending):
            try:
                sock.do_handshake()
                pending.remove(sock)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if not pending:
            return
    raise RuntimeError("handshake did not finish")


def server_side(sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> ssl.SSLSocket:
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setblocking(False)
    server = sctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = cctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    _drive(server, client)
    client.send(b"x")
    for _ in range(10_000):
        try:
            server.recv(1)
            break
        except ssl.SSLWantReadError:
            pass
    client.close()
    return server


def held_per_connection(sctx: ssl.SSLContext, cctx: ssl.SSLContext, count: int) -> tuple[float, float, str]:
    """Bytes in malloc and Python blocks per kept server-side connection, and its TLS version."""
    kept = [server_side(sctx, cctx) for _ in range(WARM)]
    gc.collect()
    malloc0, blocks0 = malloc_in_use(), sys.getallocatedblocks()
    kept += [server_side(sctx, cctx) for _ in range(count)]
    gc.collect()
    per_malloc = (malloc_in_use() - malloc0) / count
    per_blocks = (sys.getallocatedblocks() - blocks0) / count
    version = kept[-1].version() or "?"
    for sock in kept:
        sock.close()
    return per_malloc, per_blocks, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("needs Linux (glibc's mallinfo2)")
    with tempfile.TemporaryDirectory() as tmp:
        make_dev_pki(Path(tmp), clients=["client"])
        sctx = server_context(ServerConfig(tls=TLSFiles.from_dir(Path(tmp), "server")))
        cctx = client_context(ClientConfig(tls=TLSFiles.from_dir(Path(tmp), "client")))
        leaf_only = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        leaf_only.check_hostname = False
        leaf_only.verify_mode = ssl.CERT_NONE
        leaf_only.load_cert_chain(Path(tmp) / "client.pem", Path(tmp) / "client.key")
    for what, ctx in (("certificate + CA, as (d)", cctx), ("certificate only, as (d*)", leaf_only)):
        per_malloc, per_blocks, version = held_per_connection(sctx, ctx, args.connections)
        print(f"{ssl.OPENSSL_VERSION}, {version}, {args.connections} server-side connections kept,")
        print(f"clients sending their {what}:")
        print(f"  malloc (OpenSSL's SSL object and session; the socket): {per_malloc:,.0f} B per connection")
        print(f"  Python object blocks (the ssl.SSLSocket wrapper): {per_blocks:.1f} per connection")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
