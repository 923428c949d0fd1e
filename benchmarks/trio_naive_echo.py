"""Baseline: the mutual-TLS echo server a user writes from trio's docs (serve_ssl_over_tcp).

    python benchmarks/trio_naive_echo.py --cert server.pem --key server.key --ca ca.pem

Prints ``listening on HOST:PORT`` once bound (``--listen 127.0.0.1:0`` picks a port).
"""

from __future__ import annotations

import contextlib
from functools import partial

import trio
from baseline_args import listen_and_context


async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # a client that went away (or failed its handshake) must not stop the server


async def main() -> None:
    host, port, ctx = listen_and_context(__doc__)
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, echo, port, ctx, host=host)
        listeners = await nursery.start(serve)
        bound_host, bound_port = listeners[0].transport_listener.socket.getsockname()[:2]
        print(f"listening on {bound_host}:{bound_port}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
