"""Micro-benchmark of the two TLS engines: trio.SSLStream vs SSLSocketStream.

One process, one trio run per measurement, an mTLS echo over 127.0.0.1 with the same
engine on both sides (so each number includes a client and a server):

* round trips/s: one connection, ``--round-trips`` sequential echoes of 1-100 bytes;
* MB/s: ``--messages`` echoes of 256 KiB (sent and read back concurrently),
  10^6 bytes/s of echoed payload, one direction.

The engines alternate within every repetition (order swapped each time) and the
medians are printed with their ratio.  Usage::

    python benchmarks/engine_micro.py [--repeat 5] [--round-trips 20000] [--messages 200]
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from trio_tlsecho import ClientConfig, ServerConfig, TLSFiles, client_context, make_dev_pki, server_context
from trio_tlsecho._engines import SSLSocketStream

Stream = Any  # trio.SSLStream or SSLSocketStream: the same duck type
Wrap = Callable[[trio.SocketStream, ssl.SSLContext, bool], Stream]
MESSAGE = 256 * 1024


def wrap_sslstream(tcp: trio.SocketStream, ctx: ssl.SSLContext, server_side: bool) -> Stream:
    hostname = None if server_side else "localhost"
    return trio.SSLStream(tcp, ctx, server_side=server_side, server_hostname=hostname)


def wrap_sslsocket(tcp: trio.SocketStream, ctx: ssl.SSLContext, server_side: bool) -> Stream:
    hostname = None if server_side else "localhost"
    return SSLSocketStream.from_socket_stream(tcp, ctx, server_side=server_side, server_hostname=hostname)


ENGINES: dict[str, Wrap] = {"SSLStream": wrap_sslstream, "SSLSocketStream": wrap_sslsocket}


async def echo(stream: Stream) -> None:
    try:
        await stream.do_handshake()
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def with_connection(
    wrap: Wrap, sctx: ssl.SSLContext, cctx: ssl.SSLContext, work: Callable[[Stream], Awaitable[float]]
) -> float:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], trio.open_nursery() as nursery:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        nursery.start_soon(echo, wrap(await listeners[0].accept(), sctx, True))
        client = wrap(tcp, cctx, False)
        try:
            await client.do_handshake()
            result = await work(client)
        finally:
            await client.aclose()
    return result


async def round_trips(client: Stream, count: int) -> float:
    rng = random.Random(0)
    messages = [rng.randbytes(rng.randint(1, 100)) for _ in range(count)]
    start = time.perf_counter()
    for message in messages:
        await client.send_all(message)
        got = await client.receive_some(65536)
        while len(got) < len(message):  # never on loopback, but stay correct
            got += await client.receive_some(65536)
    return count / (time.perf_counter() - start)


async def throughput(client: Stream, count: int) -> float:
    payload = random.Random(1).randbytes(MESSAGE)
    start = time.perf_counter()
    for _ in range(count):
        received = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            while received < MESSAGE:
                received += len(await client.receive_some(65536))
    return count * MESSAGE / (time.perf_counter() - start) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        make_dev_pki(Path(tmp), clients=["client"])
        sctx = server_context(ServerConfig(tls=TLSFiles.from_dir(Path(tmp), "server")))
        cctx = client_context(ClientConfig(tls=TLSFiles.from_dir(Path(tmp), "client")))

    results: dict[str, dict[str, list[float]]] = {name: {"rt": [], "mbs": []} for name in ENGINES}
    names = list(ENGINES)
    for rep in range(args.repeat):
        for name in names if rep % 2 == 0 else names[::-1]:
            wrap = ENGINES[name]

            async def rt(client: Stream) -> float:
                return await round_trips(client, args.round_trips)

            async def mbs(client: Stream) -> float:
                return await throughput(client, args.messages)

            results[name]["rt"].append(trio.run(with_connection, wrap, sctx, cctx, rt))
            results[name]["mbs"].append(trio.run(with_connection, wrap, sctx, cctx, mbs))
            print(
                f"rep {rep + 1}/{args.repeat} {name:16} "
                f"{results[name]['rt'][-1]:9,.0f} round trips/s {results[name]['mbs'][-1]:7,.0f} MB/s",
                flush=True,
            )

    base, ours = (
        {k: statistics.median(v) for k, v in results[n].items()} for n in ("SSLStream", "SSLSocketStream")
    )
    print()
    print(f"{'median':16} {'SSLStream':>12} {'SSLSocketStream':>16} {'ratio':>7}")
    print(f"{'round trips/s':16} {base['rt']:12,.0f} {ours['rt']:16,.0f} {ours['rt'] / base['rt']:7.2f}")
    print(f"{'MB/s (256 KiB)':16} {base['mbs']:12,.0f} {ours['mbs']:16,.0f} {ours['mbs'] / base['mbs']:7.2f}")


if __name__ == "__main__":
    main()
