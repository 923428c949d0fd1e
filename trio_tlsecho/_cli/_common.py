"""What the subcommands' flags share: one-line argparse errors, value types (the configs'
own checks, read from text), the certificate flags, and the flags of every client."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .._config import (
    ClientConfig,
    count,
    duration,
    duration_or_zero,
    from_text,
    handler_option,
)
from .._exceptions import ConfigError
from .._net import DEFAULT_HOST, DEFAULT_PORT, Address, UnixAddress, parse_listen
from .._program import LOG_FORMATS
from .._tls import TLSFiles, has_certificates

T = TypeVar("T")

PROG = "trio-tlsecho"
DEFAULT_CERTS_DIR = Path("certs")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (``prog: error: ...``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        # One prefix for every mistake, a flag's or a file's (run_program's): the
        # command's name goes into the pointer to its help instead.
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[Parser]


def flag_type(read: Callable[[str], T]) -> Callable[[str], T]:
    """*read* as an argparse ``type=``: its :class:`ConfigError` becomes argparse's error,
    word for word (argparse shows only an ``ArgumentTypeError``'s own message)."""

    def convert(text: str) -> T:
        try:
            return read(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


# The checks of the config fields these flags fill, reading the flags' text.
count_arg = flag_type(from_text(count, int))
#: Seconds with a unit or none, as wrk2 and h2load take them: ``500ms``, ``30s``, ``2m``.
duration_arg = flag_type(from_text(duration, str))
#: The same, or 0 (any spelling of zero): no grace, no warm-up, a timeout that is off.
duration_or_zero_arg = flag_type(from_text(duration_or_zero, str))
address_arg = flag_type(Address.parse)


def _connect_address(text: str) -> Address | UnixAddress:
    return UnixAddress(text[len("unix:") :]) if text.startswith("unix:") else Address.parse(text)


#: Where a client connects: ``HOST:PORT`` or ``unix:PATH``.
connect_arg = flag_type(_connect_address)
#: ``KEY=VALUE`` for a handler factory, as a ``(key, value)`` pair.
handler_option_arg = flag_type(handler_option)
listen_arg = flag_type(parse_listen)
#: What --log-level takes, in any case (``WARNING`` as well as ``warning``).
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_flags(p: argparse.ArgumentParser, *, program: bool) -> None:
    """--log-level and --log-format on the program (*program*, with the defaults) and on
    each command (without: the program's value stands unless the flag comes after the
    command too)."""
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info" if program else argparse.SUPPRESS,
        help="log verbosity on stderr, before or after the command (default: info)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default="text" if program else argparse.SUPPRESS,
        help="log lines on stderr as text, or as one JSON object each (default: text)",
    )


def describe_command(p: argparse.ArgumentParser, description: str, *examples: str) -> None:
    """Give *p* a description and an ``examples:`` epilog that --help shows as written."""
    p.description = description
    p.epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def given(**values: object) -> dict[str, Any]:
    """The keywords whose flags were given: a config's own default stands for the others."""
    return {name: value for name, value in values.items() if value is not None}


def add_tls_flags(p: argparse.ArgumentParser, who: str) -> argparse._ArgumentGroup:
    """The certificate flags, in a group of their own (returned, for a command's own additions)."""
    g = p.add_argument_group("certificates")
    g.add_argument(
        "--certs",
        metavar="DIR",
        type=Path,
        default=DEFAULT_CERTS_DIR,
        help=f"directory made by 'certs': uses {who}.pem, {who}.key, ca.pem (default: ./certs)",
    )
    g.add_argument("--cert", metavar="FILE", type=Path, help=f"{who} certificate chain (PEM)")
    g.add_argument("--key", metavar="FILE", type=Path, help="its private key (PEM)")
    g.add_argument("--ca", metavar="FILE", type=Path, help="CA that signs the peers (PEM)")
    return g


def tls_files(args: argparse.Namespace, who: str) -> TLSFiles:
    if (args.cert is None) != (args.key is None):
        missing = "--key" if args.key is None else "--cert"
        raise ConfigError(f"--cert and --key go together: {missing} is missing")
    base = TLSFiles.from_dir(args.certs, who)
    return TLSFiles(
        cert=args.cert or base.cert,
        key=args.key or base.key,
        ca=args.ca or base.ca,
    )


def explicit_files(args: argparse.Namespace) -> bool:
    return any(x is not None for x in (args.cert, args.key, args.ca))


def require_files(tls: TLSFiles, args: argparse.Namespace) -> None:
    # The one mistake every new user makes: running the client before any certs exist.
    if not explicit_files(args) and not has_certificates(args.certs):
        raise ConfigError(
            f"no certificates in {args.certs}: run '{PROG} certs' (or start 'serve' once), "
            "or pass --cert/--key/--ca"
        )


def add_client_flags(p: argparse.ArgumentParser, *, timeout: float, timeout_help: str) -> None:
    """What every command that connects takes: where, whom to expect, how long.

    *timeout_help* may say ``%(default)g`` for *timeout*.  The certificate flags are
    ``add_tls_flags(p, "client")``, added last so that --help lists them last.
    """
    p.add_argument(
        "--connect",
        metavar="HOST:PORT",
        type=connect_arg,
        default=Address(DEFAULT_HOST, DEFAULT_PORT),
        help="server address, or unix:PATH for a UNIX-socket listener"
        f" (default: {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--server-name", metavar="NAME", help="name to verify in the server certificate (default: the host)"
    )
    p.add_argument("--timeout", metavar="TIME", type=duration_arg, default=timeout, help=timeout_help)


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The :class:`ClientConfig` that the client and certificate flags describe."""
    config = ClientConfig(tls=tls_files(args, "client"), server_hostname=args.server_name)
    require_files(config.tls, args)
    return config
