"""The package's log messages as they are logged, for an in-process test to wait for one."""

from __future__ import annotations

import logging
import math
from types import TracebackType

import trio

_LOGGER = logging.getLogger("trio_tlsecho")


class LogWatch(logging.Handler):
    """While entered, every message of the package's logger, INFO and up, in order.

    A handler of its own, not caplog's: a CLI run in an earlier test may have stopped
    the logger's propagation (see ``_restore_logger`` in conftest).
    """

    def __init__(self) -> None:
        super().__init__()
        self.send, self.receive = trio.open_memory_channel[str](math.inf)
        self._level = logging.NOTSET

    def __enter__(self) -> LogWatch:
        _LOGGER.addHandler(self)
        self._level = _LOGGER.level
        if not _LOGGER.isEnabledFor(logging.INFO):
            _LOGGER.setLevel(logging.INFO)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _LOGGER.removeHandler(self)
        _LOGGER.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        self.send.send_nowait(record.getMessage())

    async def wait_for(self, text: str) -> str:
        """The next message containing *text* (the ones before it are passed over)."""
        with trio.fail_after(30):  # a guard against a hang, not a measurement
            while True:
                message = await self.receive.receive()
                if text in message:
                    return message
