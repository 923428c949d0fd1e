"""The ``client`` subcommand: verify an echo, show any handler's reply, or relay stdin.

Flags -> :class:`ClientConfig` -> :func:`echo_once` (``--expect echo``, the default),
:func:`request_once` (``--expect any``) or :func:`talk` (``--stdin``) -> what it saw.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._client import EchoResult, Reply, echo_once, request_once, talk
from .._config import ClientConfig
from .._exceptions import ConfigError
from .._handlers import RECEIVE_SIZE
from .._net import Address
from ._common import PROG, add_client_flags, add_tls_flags, client_config, count_arg

if TYPE_CHECKING:
    from ._common import SubParsers

#: The seed workload: 5 KiB and 35 bytes, enough to span several TCP segments.
DEFAULT_RANDOM_SIZE = 5 * 1024 + 35

_EXAMPLES = f"""\
examples:
  {PROG} client                                  verify an echo of {DEFAULT_RANDOM_SIZE} random bytes
  {PROG} client --message hello --expect any     send 'hello', print the reply as it is
  {PROG} client --stdin                          relay the terminal, as openssl s_client -quiet
  printf 'GET\\n' | {PROG} client --stdin         send a request, print the reply until the server closes
  {PROG} client --message hi --expect any > reply.bin   keep the reply's bytes, exactly
  {PROG} client --connect [::1]:8443 --certs pki --cert pki/alice.pem --key pki/alice.key
"""


def add_client_parser(subparsers: SubParsers) -> None:
    """Add ``client`` to the ``trio-tlsecho`` subcommands."""
    p = subparsers.add_parser(
        "client",
        help="talk to a server over mutual TLS: verify an echo, show a reply, or relay stdin",
        description="Connect with a client certificate, show what was negotiated and who the server is,"
        " then: send a message and verify its echo byte for byte (--expect echo, the default); send"
        " it and print whatever comes back (--expect any, for handlers that are not an echo); or"
        " send stdin and print what comes back until the server closes (--stdin). The end of what is"
        " sent is a TLS 1.3 half-close (close_notify, reading on), so an echo ends by itself."
        " The reply goes to stdout as it came, everything else to stderr. Exit status: 0"
        " when it went as asked, 1 when the connection or the echo failed, 2 for a mistake in the"
        " flags or files, 130 after Ctrl-C.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_flags(
        p,
        timeout=30.0,
        timeout_help="for the echo or the reply, once connected; with --expect any, how long to"
        " wait for the server to close (default: %(default)g; connecting and the handshake have 10 s)",
    )
    p.add_argument(
        "--ignore-eof",
        action="store_true",
        help="with --stdin or --expect any: do not end our side (close_notify) at the end of what"
        " is sent; read until the server closes (--expect any: or --timeout), or Ctrl-C",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--message", metavar="TEXT", help="send this text")
    what.add_argument(
        "--random",
        metavar="N",
        type=count_arg,
        help=f"send N random bytes (default: {DEFAULT_RANDOM_SIZE})",
    )
    what.add_argument(
        "--stdin",
        action="store_true",
        help="send what stdin gives and print what comes back, until the server closes; at the"
        " end of stdin send close_notify and read on (TLS 1.3's half-close; under TLS 1.2,"
        " which has none, the end of stdin ends the session); Ctrl-C stops",
    )
    p.add_argument(
        "--expect",
        choices=["echo", "any"],
        help="echo: verify the reply byte for byte (default); any: print it, compare nothing",
    )
    add_tls_flags(p, "client")
    p.set_defaults(func=cmd_client)


def cmd_client(args: argparse.Namespace) -> int:
    config = client_config(args)
    if args.stdin:
        if args.expect is not None:
            raise ConfigError("--expect applies to --message and --random; --stdin prints what comes back")
        _run_talk(args.connect, config, ignore_eof=args.ignore_eof)
        return 0
    if args.ignore_eof and args.expect != "any":
        raise ConfigError(
            "--ignore-eof applies to --stdin and --expect any; an echo check reads only the echo"
        )
    payload = (
        args.message.encode() if args.message is not None else os.urandom(args.random or DEFAULT_RANDOM_SIZE)
    )
    if not payload:
        raise ConfigError("--message is empty: nothing to send")
    if args.expect == "any":
        request = functools.partial(request_once, timeout=args.timeout, half_close=not args.ignore_eof)
        _print_reply(trio.run(request, args.connect, config, payload))
    else:
        _print_result(trio.run(_echo, args.connect, config, payload, args.timeout))
    return 0


async def _echo(address: Address, config: ClientConfig, payload: bytes, timeout: float) -> EchoResult:
    return await echo_once(address, config, payload, timeout=timeout)


def _run_talk(address: Address, config: ClientConfig, *, ignore_eof: bool) -> None:
    try:
        trio.run(
            functools.partial(
                talk,
                address,
                config,
                _read_stdin,
                _write_stdout,
                connected=_say_connected(address),
                ignore_eof=ignore_eof,
            )
        )
    except BaseExceptionGroup as group:
        # Ctrl-C lands in the task that waits on the nursery, which wraps it: what leaves
        # the command is the KeyboardInterrupt itself (exit 130, no traceback).
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


async def _read_stdin() -> bytes:
    # In a thread: stdin may be a terminal, and making it non-blocking for trio would
    # leave the shell's terminal non-blocking too.  Abandoned when cancelled (the server
    # closed, Ctrl-C): the process is ending and the thread is a daemon.
    return await trio.to_thread.run_sync(os.read, sys.stdin.fileno(), RECEIVE_SIZE, abandon_on_cancel=True)


def _write_stdout(data: bytes | bytearray) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _say_connected(address: Address) -> Callable[[trio.SSLStream[trio.SocketStream]], None]:
    def connected(stream: trio.SSLStream[trio.SocketStream]) -> None:
        cipher = stream.cipher()
        print(
            f"connected to {address} ({stream.version()}, {cipher[0] if cipher else '?'})",
            file=sys.stderr,
            flush=True,
        )

    return connected


def _connection_lines(r: EchoResult | Reply) -> list[str]:
    mutual = {True: "yes (server required our certificate)", False: "no", None: "unknown"}[r.mutual]
    return [
        f"connected to {r.address}",
        f"protocol:              {r.tls_version}",
        f"cipher:                {r.cipher}",
        f"server subject:        {r.server.subject}",
        f"server issuer:         {r.server.issuer}",
        f"server sha256:         {r.server.fingerprint_sha256}",
        f"mutual authentication: {mutual}",
        f"handshake:             {r.handshake_seconds * 1000:.1f} ms",
    ]


def _print_result(r: EchoResult) -> None:
    lines = [
        *_connection_lines(r),
        f"echo:                  {r.sent} bytes sent, {r.received} received"
        f" in {r.echo_seconds * 1000:.1f} ms",
        "verdict:               OK, echo verified byte for byte",
    ]
    print("\n".join(lines), flush=True)


def _print_reply(r: Reply) -> None:
    # The report to stderr, the reply's own bytes to stdout: `> reply.bin` keeps exactly them.
    how = (
        "then the server closed the connection"
        if r.server_closed
        else "the server had not closed by --timeout"
    )
    lines = [
        *_connection_lines(r),
        f"reply:                 {r.sent} bytes sent, {len(r.reply)} received in"
        f" {r.reply_seconds * 1000:.1f} ms; {how}",
        "verdict:               OK, reply on stdout as received (not compared: --expect any)",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    _write_stdout(r.reply)
