"""Finding the Debian tools some integration tests drive (HAProxy, testssl.sh, a C compiler).

Locally a missing tool skips its test with the command that installs it; in CI
(``CI`` set, where ``.ci/run`` installs them) a missing tool fails the test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

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
