"""What every subcommand's flags share: one-line argparse errors, value types, certificate flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from .._exceptions import ConfigError
from .._net import Address
from .._tls import TLSFiles, has_certificates

PROG = "trio-tlsecho"
DEFAULT_CERTS_DIR = Path("certs")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (``prog: error: ...``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def seconds_or_off(text: str) -> float:
    """Seconds, or 0 (any spelling of zero) for "off"."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass  # seconds() says what is wrong with it
    return seconds(text)


def address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_tls_flags(p: argparse.ArgumentParser, who: str) -> None:
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
