"""What the program logged, for a test to read or to wait for: the server's log in-process,
and the one line a user's mistake makes."""

from __future__ import annotations

import logging
from types import TracebackType

import trio

PACKAGE = "trio_tlsecho"
_LOGGER = logging.getLogger(PACKAGE)
#: Bounds a broken build's hang, never a measurement (virtual seconds under autojump_clock).
HANG = 60


class ServerLog(logging.Handler):
    """While entered, every record logged at *level* and up, in order (the ``log`` fixture).

    On the root logger, as caplog's handler: :meth:`problems` sees every logger's
    records, the other methods the package's.  The server prefixes a line about a
    connection with the peer's ``HOST:PORT: ``; :meth:`about` reads those lines, and
    :meth:`wait_for` is how a test learns that the server has dealt with a peer it
    cannot observe (one that reset, or closed and left).
    """

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._read = 0  # where the next wait_for starts
        self._changed = trio.Event()
        self._saved_level = logging.NOTSET

    def __enter__(self) -> ServerLog:
        self._saved_level = _LOGGER.level
        self.set_level(self.level)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        logging.getLogger().removeHandler(self)
        _LOGGER.setLevel(self._saved_level)

    def set_level(self, level: int) -> None:
        """Capture from *level* up from now on, the package logging that much too."""
        self.setLevel(level)
        if not _LOGGER.isEnabledFor(level):
            _LOGGER.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()
        self._changed = trio.Event()

    def find(self, text: str = "") -> list[logging.LogRecord]:
        """The package's records whose message contains *text*."""
        return [r for r in self.records if r.name == PACKAGE and text in r.getMessage()]

    def messages(self, text: str = "") -> list[str]:
        """The package's messages that contain *text*."""
        return [r.getMessage() for r in self.find(text)]

    def about(self, peer: int | str) -> list[str]:
        """What the server logged about *peer* (``HOST:PORT``, or a port on 127.0.0.1), without the
        prefix, and without the access line that ends every connection (see :meth:`ended`)."""
        prefix = _prefix(peer)
        return [
            r.getMessage().removeprefix(prefix)
            for r in self.find()
            if r.getMessage().startswith(prefix) and getattr(r, "event", None) != "connection_closed"
        ]

    def ended(self) -> list[logging.LogRecord]:
        """The access lines so far: one per connection, once it is closed."""
        return [r for r in self.find() if getattr(r, "event", None) == "connection_closed"]

    def problems(self) -> list[str]:
        """Anything any logger logged at ERROR or with a traceback."""
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR or r.exc_info]

    async def wait_for(self, text: str, *, about: int | str | None = None) -> str:
        """The next message containing *text* (of those :meth:`about` *about*, if given).

        Waits go forward, as the log does: each starts after the message the previous
        one returned, and the messages in between are passed over.
        """
        prefix = "" if about is None else _prefix(about)
        with trio.fail_after(HANG):
            while True:
                changed = self._changed
                for record in self.records[self._read :]:
                    self._read += 1
                    message = record.getMessage()
                    line = message.removeprefix(prefix)
                    if record.name == PACKAGE and message.startswith(prefix) and text in line:
                        return line
                await changed.wait()


def _prefix(peer: int | str) -> str:
    return f"127.0.0.1:{peer}: " if isinstance(peer, int) else f"{peer}: "


def error_line(err: str) -> str:
    """The one line the program wrote to *err* for a user's mistake (no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
