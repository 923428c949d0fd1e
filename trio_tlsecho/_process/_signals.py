"""What a stop or reload signal means, decided without I/O.

Theory of operation
-------------------
Both ways of running the server, one process (``serve``) and the supervisor of
``serve --workers``, read signals the same way:

* a stop signal (SIGTERM, SIGINT) while serving starts a graceful stop;
* a stop signal while stopping means "stop now" (every later one too: a
  repeat asks for nothing new, and acting on it again is harmless);
* SIGHUP asks for a reload while serving; while stopping the server has stopped
  reloading, and it is answered with a line saying so (not "reloading").

:class:`SignalState` holds the phase and turns each signal into an
:class:`Action`; the callers differ only in what an action does.  The one
process sets its shutdown trigger, cancels everything, or queues a reload;
the supervisor sends each worker SIGTERM (the workers' only stop signal) or
SIGHUP, so that a worker sees one SIGTERM per stop signal the supervisor got
and reaches "stop now" exactly when the supervisor does.  That is also why
systemd must signal the supervisor alone (``KillMode=mixed``, see the
README): a SIGTERM to every process would be a worker's first and the
supervisor's relay its second, and the workers would stop without their grace.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Iterable, Mapping

log = logging.getLogger("trio_tlsecho")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Phase(enum.Enum):
    SERVING = "serving"
    STOPPING = "stopping"


class Action(enum.Enum):
    RELOAD = "reload"
    NO_RELOAD = "no reload: stopping"
    STOP = "stop gracefully"
    STOP_NOW = "stop now"
    IGNORE = "ignore"  # a signal this state was not made for


class SignalState:
    """The stop/reload state of a server process; :meth:`receive` takes each signal."""

    def __init__(self, stop_signals: Iterable[int] = STOP_SIGNALS) -> None:
        self.stop_signals = frozenset(stop_signals)
        self.phase = Phase.SERVING

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        """The signals to listen for: the stop signals and SIGHUP."""
        return tuple(sorted({*map(signal.Signals, self.stop_signals), signal.SIGHUP}))

    @property
    def stopping(self) -> bool:
        return self.phase is Phase.STOPPING

    def receive(self, signum: int) -> Action:
        """What *signum* asks for now; a first stop signal moves to :attr:`Phase.STOPPING`."""
        if signum == signal.SIGHUP:
            return Action.NO_RELOAD if self.phase is Phase.STOPPING else Action.RELOAD
        if signum not in self.stop_signals:
            return Action.IGNORE
        if self.phase is Phase.SERVING:
            self.phase = Phase.STOPPING
            return Action.STOP
        return Action.STOP_NOW


#: The same words for every caller.
_NO_RELOAD = "%s received while stopping: not reloading"


def log_action(action: Action, signum: int, messages: Mapping[Action, str]) -> None:
    """Log *action* with the caller's wording (``%s`` is the signal's name); "now" is a warning."""
    message = _NO_RELOAD if action is Action.NO_RELOAD else messages.get(action)
    if message is not None:
        level = logging.WARNING if action is Action.STOP_NOW else logging.INFO
        log.log(level, message, signal.Signals(signum).name)
