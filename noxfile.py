"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s bench``,
``nox -s terminator``, ``nox -s scaling``, ``nox -s workers``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS[0])
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark our server against asyncio and naive-trio baselines, then as a terminator (slow)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/terminator.py")


@nox.session(default=False)
def terminator(session: nox.Session) -> None:
    """forward against stunnel4 and HAProxy, in front of one echo target (needs both)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/terminator.py", *session.posargs)


@nox.session(default=False)
def scaling(session: nox.Session) -> None:
    """Round trips/s against serve --workers N (needs 2*N cores; slow)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/scaling.py", *session.posargs)


@nox.session(default=False)
def workers(session: nox.Session) -> None:
    """serve --workers 2 vs 1 per server CPU-second, and SO_REUSEPORT's spread (about 2 minutes)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/workers.py", *session.posargs)
