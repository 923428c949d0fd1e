"""What both baseline servers take: where to listen, and the mutual-TLS context from their files.

The context is what each library's docs show for mutual TLS (client certificates
required, verified against ``--ca``), built the same way for both baselines so that
they differ only in the event loop and TLS layer under the echo.
"""

from __future__ import annotations

import argparse
import ssl


def listen_and_context(description: str | None) -> tuple[str, int, ssl.SSLContext]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(args.cert, args.key)
    return host, int(port), ctx
