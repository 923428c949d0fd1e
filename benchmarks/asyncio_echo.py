"""Baseline: a mutual-TLS echo server on the standard library's asyncio, as its docs show.

    python benchmarks/asyncio_echo.py --cert server.pem --key server.key --ca ca.pem

Prints ``listening on HOST:PORT`` once bound (``--listen 127.0.0.1:0`` picks a port).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from baseline_args import listen_and_context


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def main() -> None:
    host, port, ctx = listen_and_context(__doc__)
    server = await asyncio.start_server(echo, host, port, ssl=ctx)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
