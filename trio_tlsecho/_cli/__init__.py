"""The command line: argparse subcommands that map flags to configs and call the layers.

May import anything in the package; nothing imports it but ``__main__``.
"""

from ._main import build_parser as build_parser
from ._main import main as main
from ._main import parse_args as parse_args
