"""sd_notify: telling systemd (``Type=notify``) that the server is ready, reloading, stopping.

The protocol (``sd_notify(3)``) is one datagram of ``KEY=VALUE`` lines to the UNIX
socket named in ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the abstract
namespace).  Without that variable every call here does nothing, so the server
need not know whether systemd runs it.  A lost datagram is not an error: systemd
would time the start out, which says more than a log line could.

What the server says, and when:

* ``READY=1`` once every listener accepts (with ``--workers``: once every worker
  does; only the supervisor speaks, systemd's ``NotifyAccess=main``);
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP reload starts, and
  ``READY=1`` when it is done (``Type=notify-reload`` waits for it);
* ``STOPPING=1`` when a graceful stop starts;
* ``STATUS=`` with the open connections whenever their number changes (polled:
  ``systemctl status`` is read by people, a second late is on time).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import trio

log = logging.getLogger("trio_tlsecho")

#: How often the connection count is looked at for ``STATUS=``.
STATUS_INTERVAL = 1.0


class Notifier:
    """Sends notifications to *address* (``$NOTIFY_SOCKET``'s value); ``None``: to nobody."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of *fields* (``"READY=1"``, ...)."""
        if self.address is None:
            return
        message = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a full queue drops a status; it must not stop the server
            try:
                sock.sendto(message, self.address)
            except OSError as exc:
                log.debug("sd_notify to %r failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # Type=notify-reload needs the clock reading to tell this reload from an older one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading certificates")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    async def report_connections(self, count: Callable[[], int], describe: Callable[[int], str]) -> None:
        """Send ``STATUS=describe(count())`` whenever the count changes; runs until cancelled."""
        if self.address is None:
            return
        last = count()
        while True:
            await trio.sleep(STATUS_INTERVAL)
            now = count()
            if now != last:
                self.send(f"STATUS={describe(now)}")
                last = now


def connections_status(open_now: int) -> str:
    return f"serving, {open_now} connection{'' if open_now == 1 else 's'} open"
