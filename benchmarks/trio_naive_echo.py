"""Baseline: the mutual-TLS echo server a user writes from trio's docs (serve_ssl_over_tcp).

    python benchmarks/trio_naive_echo.py --cert server.pem --key server.key --ca ca.pem

Prints ``listening on HOST:PORT`` once bound (``--listen 127.0.0.1:0`` picks a port).
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
from functools import partial

import trio


async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # a client that went away (or failed its handshake) must not stop the server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(args.cert, args.key)
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, echo, int(port), ctx, host=host)
        listeners = await nursery.start(serve)
        bound_host, bound_port = listeners[0].transport_listener.socket.getsockname()[:2]
        print(f"listening on {bound_host}:{bound_port}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
