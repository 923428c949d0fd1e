"""Command line: parse flags, build config objects, call the library.  Nothing else.

A user's mistake ends as one line on stderr and exit status 2; a TLS or network
failure of ``client`` as one line and status 1.  Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .._config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE,
    ENGINES,
    ServerConfig,
)
from .._exceptions import ConfigError
from .._handlers import handler_names
from .._net import DEFAULT_HOST, DEFAULT_PORT, ListenAddress
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
from ._client import add_client_parser
from ._common import (
    DEFAULT_CERTS_DIR,
    PROG,
    Parser,
    add_log_flags,
    add_tls_flags,
    address_arg,
    count_arg,
    describe_command,
    duration_arg,
    duration_or_zero_arg,
    explicit_files,
    given,
    handler_option_arg,
    listen_arg,
    tls_files,
)
from ._loadgen import add_loadgen_parser
from ._report import add_report_parser
from ._settings import ENV_FLAGS, ENV_PREFIX, apply, read_environment, read_file, settable

if TYPE_CHECKING:
    from ._common import SubParsers

log = logging.getLogger("trio_tlsecho")


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, SubParsers]:
    parser = Parser(prog=PROG)
    describe_command(
        parser,
        "Mutual-TLS echo server, client and tools on trio.  '%(prog)s COMMAND --help' says more.",
        f"{PROG} serve    # on {DEFAULT_HOST}:{DEFAULT_PORT}, with a development PKI made in ./certs",
        f"{PROG} client   # from another terminal: one verified echo",
        f"{PROG} demo     # both at once, and clients the server refuses",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_flags(parser, program=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in (
        _add_certs_parser,
        _add_serve_parser,
        add_client_parser,
        add_loadgen_parser,
        add_report_parser,
        _add_demo_parser,
    ):
        add(sub)
    for command in sub.choices.values():
        add_log_flags(command, program=False)
    _document_environment(sub.choices["serve"], settable([parser, sub.choices["serve"]]))
    return parser, sub


def _document_environment(serve: argparse.ArgumentParser, actions: Mapping[str, argparse.Action]) -> None:
    dests = {action.dest for action in actions.values()} | {"config"}
    names = [ENV_PREFIX + dest.upper() for dest in ENV_FLAGS if dest in dests]
    lines = textwrap.wrap(", ".join(names), 86, initial_indent="  ", subsequent_indent="  ")
    heading = "environment (a flag's value; a list is comma-separated):"
    serve.epilog = f"{serve.epilog}\n\n{heading}\n" + "\n".join(lines)


def _add_certs_parser(sub: SubParsers) -> None:
    p = sub.add_parser("certs", help="make a development CA, server and client certificates")
    describe_command(
        p,
        "Make (or extend) a development PKI: a CA, a server certificate, client certificates\n"
        "and a revocation list.  For trying things out; bring your own PKI in production.",
        f"{PROG} certs                               # ./certs: ca, server, client, crl",
        f"{PROG} certs --client alice --client bob   # more clients the running server trusts",
        f"{PROG} certs --server-name echo.example    # a server certificate for that name",
        f"{PROG} certs --revoke alice                # add alice.pem to certs/crl.pem",
    )
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
    describe_command(
        p,
        "Serve mutual TLS: every client needs a certificate from --ca.  Settings come from\n"
        '--config FILE (TOML; its keys are the flags\' names: listen = ["0.0.0.0:8443"]),\n'
        "then from the environment (below), then from the flags given here, each overriding\n"
        "the one before.",
        f"{PROG} serve --listen 0.0.0.0:8443 --cert server.pem --key server.key --ca ca.pem",
        f"{PROG} serve --config /etc/trio-tlsecho/serve.toml --log-level warning",
        f"{PROG} serve --listen systemd --workers 4   # sockets from a systemd .socket unit",
        f"{PROG} serve --listen unix:/run/trio-tlsecho/echo.sock --handler discard",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="read settings from this TOML file (flags and TRIO_TLSECHO_* variables override it)",
    )
    p.add_argument(
        "--listen",
        metavar="ADDRESS",
        type=listen_arg,
        action="append",
        help="HOST:PORT ([::1]:PORT for IPv6, port 0 picks one), unix:PATH, systemd (every socket"
        " systemd passed), systemd:NAME (those named NAME) or fd://N (an inherited descriptor);"
        f" repeatable (default: {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--handler",
        default="echo",
        help=f"handler: one installed ({', '.join(handler_names())}) or module:attr (default: echo)",
    )
    p.add_argument(
        "--handler-option",
        dest="handler_options",
        metavar="KEY=VALUE",
        type=handler_option_arg,
        action="append",
        default=[],
        help="an option for the handler, repeatable (e.g. --handler forward --handler-option"
        " target=127.0.0.1:8080)",
    )
    p.add_argument(
        "--handshake-timeout",
        metavar="TIME",
        type=duration_arg,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        help=f"drop peers that have not finished TLS by then (default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    p.add_argument(
        "--min-tls", choices=["1.2", "1.3"], default="1.2", help="lowest TLS version (default: 1.2)"
    )
    p.add_argument(
        "--idle-timeout",
        metavar="TIME",
        type=duration_or_zero_arg,
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
        metavar="TIME",
        type=duration_or_zero_arg,
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
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let returning clients resume TLS sessions (abbreviated handshakes; see README)",
    )
    g = p.add_argument_group("behind a load balancer")
    g.add_argument(
        "--proxy-protocol",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="expect a PROXY protocol v1/v2 header (HAProxy send-proxy[-v2]) before TLS",
    )
    g.add_argument(
        "--proxy-from",
        metavar="CIDR",
        action="append",
        default=[],
        help="accept PROXY headers only from these balancer addresses (repeatable; needs --proxy-protocol)",
    )
    g = add_tls_flags(p, "server")
    g.add_argument(
        "--crl", metavar="FILE", type=Path, help="refuse client certificates revoked in this CRL (PEM)"
    )
    g.add_argument(
        "--keylog",
        metavar="FILE",
        type=Path,
        help="append TLS secrets to FILE (SSLKEYLOGFILE format) for Wireshark; debugging only",
    )
    p.set_defaults(func=_cmd_serve)


def _add_demo_parser(sub: SubParsers) -> None:
    p = sub.add_parser("demo", help="serve on a free port and run verified clients against it")
    describe_command(
        p,
        "Serve on a free port of 127.0.0.1 and show, in one terminal, a verified echo and the\n"
        "clients a mutual-TLS server refuses: one without a certificate, one from another CA.",
        f"{PROG} demo",
        f"{PROG} certs --out /tmp/demo-certs && {PROG} demo --certs /tmp/demo-certs",
    )
    p.add_argument("--certs", metavar="DIR", type=Path, default=DEFAULT_CERTS_DIR, help="default: ./certs")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-tlsecho`` and ``python -m trio_tlsecho``; returns the exit status."""
    return run_program(functools.partial(_run, argv))


def _run(argv: Sequence[str] | None) -> int:
    args = parse_args(argv, os.environ)
    setup_logging(args.log_level, log_format=args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    """The command line over the config file and the environment (see :mod:`._settings`)."""
    parser, sub = _build()
    args = parser.parse_args(argv)
    top = settable([parser])
    layered = read_environment(top, environ)
    command = sub.choices[args.command]
    if args.command == "serve":
        own = settable([command])
        config = args.config or Path(environ.get(ENV_PREFIX + "CONFIG") or "")
        if config != Path():
            layered |= read_file(config, {**top, **own})
        layered = _one_certificate_source(layered, read_environment(own, environ))
        if _given(argv, "--certs") and not any(getattr(args, f) for f in _FILES):
            layered = _one_certificate_source(layered, {"certs": args.certs})
    if not layered:
        return args
    # The top-level parser holds --log-level's default; a command's own copy has none.
    parser.set_defaults(**{dest: v for dest, v in layered.items() if dest in _dests(top)})
    command.set_defaults(**{dest: v for dest, v in layered.items() if dest not in _dests(top)})
    args = parser.parse_args(argv)
    apply(args, layered)
    return args


_FILES = ("cert", "key", "ca")


def _one_certificate_source(lower: dict[str, object], upper: Mapping[str, object]) -> dict[str, object]:
    """*upper* over *lower*, where a directory (``certs``) in *upper* without files of its
    own replaces the files *lower* named: ``--certs DIR`` on the command line means that
    directory's certificates, not the config file's ``cert``/``key``/``ca``."""
    if "certs" in upper and not any(f in upper for f in _FILES):
        lower = {dest: v for dest, v in lower.items() if dest not in _FILES}
    return lower | dict(upper)


def _given(argv: Sequence[str] | None, flag: str) -> bool:
    words = sys.argv[1:] if argv is None else argv
    return any(w == flag or w.startswith(flag + "=") for w in words)


def _dests(actions: Mapping[str, argparse.Action]) -> set[str]:
    return {action.dest for action in actions.values()}


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
        handler_options=args.handler_options,
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
    if args.workers > 1:
        run = functools.partial(
            supervise,
            config,
            args.workers,
            on_started=_print_addresses,
            metrics_address=args.metrics,
            log_level=args.log_level.upper(),
            log_format=args.log_format,
        )
    else:
        run = functools.partial(
            serve_until_signalled, config, on_started=_print_addresses, metrics_address=args.metrics
        )
    try:
        stopped_by = trio.run(run)
    except KeyboardInterrupt:  # Ctrl-C before our signal receiver was installed
        stopped_by = signal.SIGINT
    # A graceful stop is a success, but Ctrl-C ends a command with 130 as a shell
    # expects (every command does); SIGTERM, how systemd stops a service, with 0.
    return 128 + signal.SIGINT if stopped_by == signal.SIGINT else 0


def _print_addresses(addresses: list[ListenAddress]) -> None:
    for address in addresses:
        print(f"listening on {address}", flush=True)


# -- demo --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # only the demo needs it

    _ensure_dev_certs(args.certs)
    return trio.run(run_demo, args.certs)
