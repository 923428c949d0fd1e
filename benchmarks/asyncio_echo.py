"""Baseline: a mutual-TLS echo server on the standard library's asyncio, as its docs show.

    python benchmarks/asyncio_echo.py --cert server.pem --key server.key --ca ca.pem

Prints ``listening on HOST:PORT`` once bound (``--listen 127.0.0.1:0`` picks a port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


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
    server = await asyncio.start_server(echo, host, int(port), ssl=ctx)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
