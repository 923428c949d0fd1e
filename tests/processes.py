"""The program as a child process: a command run to its end, a server, the lines they print.

Tests that need the real thing (signals, exit statuses, a console script, several
processes) start ``python -m trio_tlsecho`` here; everything else calls ``serve()`` or
``main()`` in-process.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGTERM
from types import TracebackType
from typing import Protocol

import trio

from trio_tlsecho import Address
from trio_tlsecho._net import UnixAddress, parse_listen

#: The command line of the program, as the README runs it.
PY = (sys.executable, "-m", "trio_tlsecho")


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Lines:
    """What a child process writes to one pipe, line by line, each awaited with a deadline.

    A thread reads the pipe to its end as the lines come, so a child never blocks on a
    full pipe (a server logging a line per connection through a long test), and a line
    is never held in a buffer where a wait would not see it.  Waits go forward: each
    starts after the line the previous one returned.
    """

    def __init__(self, pipe: _HasFileno) -> None:
        self.seen: list[str] = []
        self._next = 0
        self._ended = False
        self._changed = threading.Condition()
        # Our own descriptor: the pipe's owner may close its own while we still read.
        fd = os.dup(pipe.fileno())
        threading.Thread(target=self._read, args=(fd,), daemon=True).start()

    def _read(self, fd: int) -> None:
        partial = b""
        readable = select.poll()
        readable.register(fd, select.POLLIN)
        try:
            while True:
                readable.poll()
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:  # a non-blocking pipe (trio's) with nothing after all
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                *complete, partial = (partial + chunk).split(b"\n")
                with self._changed:
                    self.seen += [line.decode(errors="replace") for line in complete]
                    self._changed.notify_all()
        finally:
            os.close(fd)
            with self._changed:
                if partial:
                    self.seen.append(partial.decode(errors="replace"))
                self._ended = True
                self._changed.notify_all()

    def next(self, timeout: float = 30) -> str | None:
        """The line after the last one returned; ``None`` once the pipe has ended, or after *timeout*."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._next == len(self.seen):
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return None
                self._changed.wait(left)
            self._next += 1
            return self.seen[self._next - 1]

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The next line containing *text* (the lines before it are passed over); ``""`` if
        the pipe ends or *timeout* passes first."""
        deadline = time.monotonic() + timeout
        while (line := self.next(deadline - time.monotonic())) is not None:
            if text in line:
                return line
        return ""

    async def await_line(self, text: str = "", timeout: float = 30) -> str:
        """:meth:`wait_for`, from a trio task: it waits in a thread, and the run's other
        tasks (a server in this process) go on meanwhile.  Without *text*, the next line."""
        return await trio.to_thread.run_sync(self.wait_for, text, timeout)

    def all(self, timeout: float = 60) -> str:
        """Every line the pipe carried, once it has ended (which it must within *timeout*)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._ended:
                left = deadline - time.monotonic()
                assert left > 0, "the pipe is still open; so far:\n" + "\n".join(self.seen)
                self._changed.wait(left)
            return "".join(line + "\n" for line in self.seen)


def run_cli(
    *args: str, cwd: Path | None = None, program: Sequence[str] = PY, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``trio-tlsecho ARGS`` run in *cwd* to its end: its exit status, stdout and stderr."""
    return subprocess.run([*program, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# How long a server left running at the end of its test gets to stop by itself.
_STOP_TIMEOUT = 15


class ServeProcess:
    """``trio-tlsecho serve ARGS`` as a child process in *cwd*, for one ``with`` block.

    Entering starts it and waits, with a deadline, until it has printed ``metrics on
    URL`` (with ``--metrics``) and one ``listening on`` line per listener (*listeners*;
    0 waits for nothing): ``addresses`` and ``metrics_url`` are what it printed.  Its log
    is ``stderr`` (:class:`Lines`).  Leaving the block kills it if it still runs.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path,
        listeners: int = 1,
        program: Sequence[str] = PY,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.command = [*program, "serve", *args]
        self.cwd, self.listeners = cwd, listeners
        #: Variables added to this process's environment.
        self.env = dict(env or {})
        #: Its own process group, as a terminal gives it (for Ctrl-C: ``os.killpg``).
        self.new_session = new_session
        self.addresses: list[Address | UnixAddress] = []
        self.metrics_url = ""

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            start_new_session=self.new_session,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.stdout, self.stderr = Lines(self.proc.stdout), Lines(self.proc.stderr)
        try:
            self._wait_listening(timeout=60)
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._kill()

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.addresses) < self.listeners:
            line = self.stdout.next(deadline - time.monotonic())
            if line is not None and line.startswith("metrics on "):
                self.metrics_url = line.split()[-1]
            elif line is not None and line.startswith("listening on "):
                self.addresses.append(parse_listen(line.split()[-1]))  # type: ignore[arg-type]
            else:
                self._kill()
                raise AssertionError(
                    f"serve printed {line!r}, not 'listening on'; its log:\n{self.stderr.all()}"
                )

    @property
    def address(self) -> Address:
        """The first listener's address."""
        return self.addresses[0]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        """Its exit status and its whole log, once it has ended by itself."""
        code = self.proc.wait(timeout=timeout)
        return code, self.stderr.all(timeout)

    def stop(self, signum: int = SIGTERM, timeout: float = 60) -> tuple[int, str]:
        """Send *signum* (if it still runs) and :meth:`wait`."""
        if self.proc.poll() is None:
            self.signal(signum)
        return self.wait(timeout)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM first: a --workers supervisor stops its workers; killed, it would
            # leave them running after the test (orphans that still hold the port).
            self.proc.terminate()
            try:
                self.proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
