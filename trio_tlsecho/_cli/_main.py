"""Command line: parse flags, build config objects, call the library.  Nothing else.

A user's mistake ends as one line on stderr and exit status 2; a TLS or network
failure of ``client`` as one line and status 1.  Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .._client import EchoResult, echo_once
from .._config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE,
    ENGINES,
    ClientConfig,
    ServerConfig,
)
from .._exceptions import ConfigError
from .._net import DEFAULT_HOST, DEFAULT_PORT, Address
from .._process import serve_until_signalled, supervise
from .._program import run_program, setup_logging
from .._tls import (
    CA_DAYS,
    DEFAULT_DAYS,
    DEFAULT_SERVER_NAMES,
    AllowList,
    has_certificates,
    make_dev_pki,
    revoke,
)
from .._version import __version__
from ._common import (
    DEFAULT_CERTS_DIR,
    PROG,
    Parser,
    add_client_flags,
    add_tls_flags,
    address_arg,
    client_config,
    count_arg,
    explicit_files,
    given,
    seconds_arg,
    seconds_or_zero_arg,
    tls_files,
)
from ._loadgen import add_loadgen_parser
from ._report import add_report_parser

if TYPE_CHECKING:
    from ._common import SubParsers

#: The seed workload: 5 KiB and 35 bytes, enough to span several TCP segments.
DEFAULT_RANDOM_SIZE = 5 * 1024 + 35

log = logging.getLogger("trio_tlsecho")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Mutual-TLS echo server, client and tools on trio.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in (
        _add_certs_parser,
        _add_serve_parser,
        _add_client_parser,
        add_loadgen_parser,
        add_report_parser,
        _add_demo_parser,
    ):
        add(sub)
    return parser


def _add_certs_parser(sub: SubParsers) -> None:
    p = sub.add_parser("certs", help="make a development CA, server and client certificates")
    p.add_argument("--out", metavar="DIR", type=Path, default=DEFAULT_CERTS_DIR, help="default: ./certs")
    p.add_argument(
        "--server-name",
        metavar="NAME",
        action="append",
        help=f"server DNS name or IP, repeatable (default: {', '.join(DEFAULT_SERVER_NAMES)})",
    )
    p.add_argument(
        "--client",
        metavar="NAME",
        action="append",
        help="client name, repeatable: writes NAME.pem and NAME.key (default: client; a new CA"
        " always gets client.pem too)",
    )
    p.add_argument(
        "--days",
        type=count_arg,
        default=DEFAULT_DAYS,
        help=f"how long leaves are valid, 1 to {CA_DAYS} (default: {DEFAULT_DAYS})",
    )
    p.add_argument("--force", action="store_true", help="make a new CA even if DIR has one")
    p.add_argument(
        "--revoke",
        metavar="NAME",
        action="extend",
        nargs="*",
        help="revoke DIR/NAME.pem: add it to DIR/crl.pem (serve --crl DIR/crl.pem; SIGHUP reloads);"
        " with no NAME, only renew crl.pem",
    )
    p.set_defaults(func=_cmd_certs)


def _add_serve_parser(sub: SubParsers) -> None:
    # Each flag fills the ServerConfig field of (nearly) its name; the config checks them
    # together, so that an embedding app gets the same answers.
    p = sub.add_parser("serve", help="run the mutual-TLS server")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=address_arg,
        action="append",
        help=f"address to listen on, repeatable; [::1]:PORT for IPv6, port 0 picks one"
        f" (default: {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    p.add_argument("--handler", default="echo", help="handler name or module:attr (default: echo)")
    p.add_argument(
        "--handshake-timeout",
        metavar="SECONDS",
        type=seconds_arg,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        help=f"drop peers that have not finished TLS by then (default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    p.add_argument(
        "--min-tls", choices=["1.2", "1.3"], default="1.2", help="lowest TLS version (default: 1.2)"
    )
    p.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=seconds_or_zero_arg,
        default=DEFAULT_IDLE_TIMEOUT,
        help="close connections that move no bytes for this long; 0: never"
        f" (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=count_arg,
        help="stop accepting while N connections are open (default: no limit)",
    )
    p.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        type=seconds_or_zero_arg,
        default=DEFAULT_SHUTDOWN_GRACE,
        help="on SIGTERM/SIGINT, how long open connections may finish"
        f" (default: {DEFAULT_SHUTDOWN_GRACE:g}; a second signal stops at once)",
    )
    g = p.add_argument_group("client authorization (beyond 'signed by the CA'; any match admits)")
    g.add_argument("--allow-cn", metavar="NAME", action="append", default=[], help="client subject CN")
    g.add_argument(
        "--allow-san",
        metavar="DNS:NAME|URI:URI|IP:ADDR",
        action="append",
        default=[],
        help="client subject alternative name, e.g. URI:spiffe://example.org/app or IP:10.0.0.7",
    )
    g.add_argument(
        "--allow-fingerprint",
        metavar="SHA256",
        action="append",
        default=[],
        help="pin a client certificate by its SHA-256 fingerprint (hex, colons optional)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=count_arg,
        default=1,
        help="run N server processes sharing the ports (SO_REUSEPORT) under one supervisor (default: 1)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=address_arg,
        help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics (off by default)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="trio",
        help="TLS engine: trio's SSLStream, or OpenSSL on a non-blocking socket (faster) (default: trio)",
    )
    p.add_argument(
        "--session-tickets",
        action="store_true",
        help="let returning clients resume TLS sessions (abbreviated handshakes; see README)",
    )
    g = p.add_argument_group("behind a load balancer")
    g.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header (HAProxy send-proxy[-v2]) before TLS",
    )
    g.add_argument(
        "--proxy-from",
        metavar="CIDR",
        action="append",
        default=[],
        help="accept PROXY headers only from these balancer addresses (repeatable; needs --proxy-protocol)",
    )
    add_tls_flags(p, "server")
    p.add_argument(
        "--crl", metavar="FILE", type=Path, help="refuse client certificates revoked in this CRL (PEM)"
    )
    p.add_argument(
        "--keylog",
        metavar="FILE",
        type=Path,
        help="append TLS secrets to FILE (SSLKEYLOGFILE format) for Wireshark; debugging only",
    )
    p.set_defaults(func=_cmd_serve)


def _add_client_parser(sub: SubParsers) -> None:
    p = sub.add_parser("client", help="send one message over mutual TLS and verify the echo")
    add_client_flags(
        p,
        timeout=30.0,
        timeout_help="for the echo, once connected"
        " (default: %(default)g; connecting and the handshake have 10 s)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--message", metavar="TEXT", help="send this text")
    what.add_argument(
        "--random",
        metavar="N",
        type=count_arg,
        help=f"send N random bytes (default: {DEFAULT_RANDOM_SIZE})",
    )
    add_tls_flags(p, "client")
    p.set_defaults(func=_cmd_client)


def _add_demo_parser(sub: SubParsers) -> None:
    p = sub.add_parser("demo", help="serve on a free port and run verified clients against it")
    p.add_argument("--certs", metavar="DIR", type=Path, default=DEFAULT_CERTS_DIR, help="default: ./certs")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-tlsecho`` and ``python -m trio_tlsecho``; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    return run_program(functools.partial(func, args))


# -- certs -------------------------------------------------------------------------


def _cmd_certs(args: argparse.Namespace) -> int:
    if args.revoke is not None:
        if args.client or args.server_name or args.force:
            raise ConfigError("--revoke only updates the CRL; give --client/--server-name/--force separately")
        crl = revoke(args.out, args.revoke, days=args.days)
        print(f"revoked {', '.join(args.revoke)}: wrote {crl}" if args.revoke else f"renewed {crl}")
        return 0
    issued = make_dev_pki(
        args.out,
        server_names=args.server_name,  # None: keep server.pem (and its names)
        clients=args.client or ["client"],
        days=args.days,
        force=args.force,
    )
    if not issued.ca_created:
        print(f"reusing the CA in {issued.directory / 'ca.pem'} (--force makes a new one)")
    for path in issued.written:
        print(f"wrote {path}")
    for path in issued.stale:
        print(f"left {path}: issued by the old CA, no longer trusted")
    return 0


def _ensure_dev_certs(directory: Path) -> None:
    # Only the default ./certs, and only where it would overwrite nothing: a --certs DIR
    # without a CA is a mistake (a typo would otherwise serve a brand-new PKI), and a
    # directory with keys of its own but no ca.pem is somebody's files.
    if has_certificates(directory):
        return
    if directory != DEFAULT_CERTS_DIR:
        raise ConfigError(
            f"no certificates in {directory} (no ca.pem): run '{PROG} certs --out {directory}',"
            " or pass --cert/--key/--ca"
        )
    present = sorted(p.name for p in directory.glob("*") if p.suffix in (".pem", ".key"))
    if present:
        raise ConfigError(
            f"{directory} holds {', '.join(present)} but no ca.pem: not making a development PKI"
            " over them; pass --cert/--key/--ca, or move them away"
        )
    make_dev_pki(directory)
    log.warning(
        "no certificates in %s: created a development CA, server and client certificates"
        " there (for trying things out; pass --cert/--key/--ca in production)",
        directory,
    )


# -- serve -------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    if not explicit_files(args):
        _ensure_dev_certs(args.certs)
    if ":" in args.handler and not {"", os.getcwd()} & set(sys.path):
        # `python -m` looks up a --handler module:attr from the current directory; the
        # trio-tlsecho script must too (as uvicorn and gunicorn do).  Workers inherit it.
        sys.path.insert(0, os.getcwd())
    config = ServerConfig(
        tls=tls_files(args, "server"),
        **given(listen=args.listen),
        handler=args.handler,
        handshake_timeout=args.handshake_timeout,
        min_tls_version=args.min_tls,
        allow=AllowList(common_names=args.allow_cn, sans=args.allow_san, fingerprints=args.allow_fingerprint),
        crl=args.crl,
        idle_timeout=args.idle_timeout or None,
        max_connections=args.max_connections,
        shutdown_grace=args.shutdown_grace,
        keylog=args.keylog,
        proxy_protocol=args.proxy_protocol,
        session_tickets=args.session_tickets,
        engine=args.engine,
        proxy_from=args.proxy_from,
    )
    # KeyboardInterrupt: Ctrl-C before our signal receiver was installed.
    with contextlib.suppress(KeyboardInterrupt):
        if args.workers > 1:
            run = functools.partial(
                supervise,
                config,
                args.workers,
                on_started=_print_addresses,
                metrics_address=args.metrics,
                log_level=args.log_level.upper(),
            )
        else:
            run = functools.partial(
                serve_until_signalled, config, on_started=_print_addresses, metrics_address=args.metrics
            )
        trio.run(run)
    return 0


def _print_addresses(addresses: list[Address]) -> None:
    for address in addresses:
        print(f"listening on {address}", flush=True)


# -- client ------------------------------------------------------------------------


def _cmd_client(args: argparse.Namespace) -> int:
    payload = (
        args.message.encode() if args.message is not None else os.urandom(args.random or DEFAULT_RANDOM_SIZE)
    )
    if not payload:
        raise ConfigError("--message is empty: nothing to echo")
    result = trio.run(_echo, args.connect, client_config(args), payload, args.timeout)
    _print_result(result)
    return 0


async def _echo(address: Address, config: ClientConfig, payload: bytes, timeout: float) -> EchoResult:
    return await echo_once(address, config, payload, timeout=timeout)


def _print_result(r: EchoResult) -> None:
    mutual = {True: "yes (server required our certificate)", False: "no", None: "unknown"}[r.mutual]
    lines = [
        f"connected to {r.address}",
        f"protocol:              {r.tls_version}",
        f"cipher:                {r.cipher}",
        f"server subject:        {r.server.subject}",
        f"server issuer:         {r.server.issuer}",
        f"server sha256:         {r.server.fingerprint_sha256}",
        f"mutual authentication: {mutual}",
        f"handshake:             {r.handshake_seconds * 1000:.1f} ms",
        f"echo:                  {r.sent} bytes sent, {r.received} received"
        f" in {r.echo_seconds * 1000:.1f} ms",
        "verdict:               OK, echo verified byte for byte",
    ]
    print("\n".join(lines), flush=True)


# -- demo --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # only the demo needs it

    _ensure_dev_certs(args.certs)
    return trio.run(run_demo, args.certs)
