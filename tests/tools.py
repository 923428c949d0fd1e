"""Finding the Debian tools some integration tests drive (HAProxy, testssl.sh, a C compiler).

Locally a missing tool skips its test with the command that installs it; in CI
(``CI`` set, where ``.ci/run`` installs them) a missing tool fails the test.
"""

from __future__ import annotations

import os
import select
import shutil
import time
from typing import IO, NoReturn

import pytest


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed", package)
    return path


def missing(what: str, package: str) -> NoReturn:
    """Skip (locally) or fail (in CI) a test that needs *package*."""
    message = f"{what}: apt-get install {package}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must install it: see .ci/run)")
    pytest.skip(message)


class Lines:
    """Lines from a child process's pipe, waited for with a deadline.

    Reads the raw file descriptor itself: a buffered reader can hold lines that
    ``select`` no longer sees, and then a wait would miss them.
    """

    def __init__(self, stream: IO[str] | IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.seen: list[str] = []
        self._partial = b""
        self._eof = False

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first unseen-before line containing *text*; '' at EOF or after *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._partial:
                raw, self._partial = self._partial.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.seen.append(line)
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if self._eof or left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return ""
            chunk = os.read(self.fd, 65536)
            self._eof = not chunk
            self._partial += chunk

    def rest(self) -> str:
        """Everything seen, plus whatever the pipe holds until EOF (call after the process ended)."""
        while not self._eof:
            chunk = os.read(self.fd, 65536)
            self._eof = not chunk
            self._partial += chunk
        return "\n".join(self.seen) + "\n" + self._partial.decode(errors="replace")
