"""The load generator: many mutual-TLS clients echoing at once, measured honestly.

Theory of operation
-------------------
``run_load(config)`` starts ``config.clients`` client tasks in one nursery (or, with
``workers > 1``, that many processes each running its own ``trio.run`` over a share
of the clients, see below; either way the clients of a process are one
:class:`._client.Share`).  A client connects, then repeats *exchanges*: send one
message, read back exactly as many bytes, compare them byte for byte.  Reading no
more than that keeps the hot path at one ``pending()`` call to notice an echo that
goes on (plaintext left over in its last TLS record); a connection closed after one
exchange also gets one non-blocking read for anything that arrived later.

Phases.  With a duration, the whole run ends ``warmup + duration`` after it was
launched (:meth:`._client.Share.launched`; with workers, on the parent's monotonic
clock, which every process of the machine shares): connecting, and starting worker
processes, are part of it.  Without ``ramp``, every client first connects and the
measurement clock starts (``t0``) only when all have (a barrier), so that 64
handshakes queueing at the server are reported as handshake latency, not as the
first round trips' latency; the barrier waits at most a quarter of the duration, and
clients still connecting then join when they are (those still connecting at the end
count as timeouts).  With ``ramp``, client *i* starts at ``t0 + ramp * i / clients``
instead.  Whatever begins in ``[t0, t0 + warmup)`` is not counted; the measured
window runs from ``t0 + warmup`` to the end of the run, or until ``requests``
exchanges are done.  With a duration the reported seconds are that window whenever
the clients stop (an open loop's last send is due before its end, and its clients
stop after its echo).

Failing fast.  A connection error (refused, unreachable, no answer in time) while
no connection is open and none was made in the last second ends the run with a
:class:`ClientError`: the target cannot be reached, and retrying would only count
errors.  So does a TLS handshake refused (a certificate that does not verify, an
alert; not a hang-up) while no connection open now, nor one in the last second,
completed an echo: with TLS 1.3 the server judges our certificate after our side of
the handshake is done, so only an echo says it accepted us.  While the server answers
(or accepts) other clients, the client retries after a back-off that doubles from
10 ms to 1 s.

Closed loop (no ``rate``): each client sends as soon as its previous echo is back;
latency is measured from the send.  Open loop (``rate`` round trips/s in total): each
client owns ``rate / clients`` of it and its *k*-th exchange is due at
``start + phase + k * clients / rate``, with the clients' phases spread evenly.  A
client that falls behind sends at once, and latency is measured from the *intended*
time, so queueing delay that a closed loop hides (coordinated omission) is counted,
as wrk2 does.  Sends due after the end are not made.

Every exchange that starts inside the window is committed to the
:class:`._stats.Recorder` when it ends, however it ends, and once: its I/O counts,
and a round trip, a mismatch or an error by kind.  An error ends the connection;
the next exchange reconnects.
Every exchange, connecting included, runs under ``timeout``; a deadline that passes
after its outcome is recorded (in the close that follows) costs at most the
connection, never a second count.

Transport.  Clients drive a non-blocking ``ssl.SSLSocket`` with trio's
``wait_readable``/``wait_writable`` instead of ``trio.SSLStream``: half the CPU per
round trip (see :class:`._transport.ClientConnection`), with the same
``client_context`` policy.  Once connected, a client in a closed loop of messages up
to 64 KiB hands its connection to the process's :class:`._exchanger.ExchangeLoop`,
which sends, reads and checks every such client's exchanges from one task and one
``epoll`` set, and hands the connection back for anything else (a failure, a
timeout, a close, the end of its requests).

Workers: see :mod:`._workers`.  Modules: :mod:`._config` (sans-io),
:mod:`._stats` (sans-io), :mod:`._transport` (the socket), :mod:`._client` (the
clients), :mod:`._exchanger` (their steady closed loops), :mod:`._workers`
(processes), and here the one entry point.
"""

from __future__ import annotations

import trio

from .._tls import client_context
from ._client import Share, run_here
from ._config import LoadConfig, ProgressCallback
from ._stats import LoadReport
from ._transport import Target
from ._workers import run_workers


async def run_load(
    config: LoadConfig, *, progress: ProgressCallback | None = None, stop: trio.Event | None = None
) -> LoadReport:
    """Run the load *config* describes against a server and return what it measured.

    *progress*, if given, is called about once a second with the totals so far.  Setting
    *stop* ends the run early (Ctrl-C), with what it measured until then.  A server that
    cannot be reached at all is a :class:`ClientError`, within a second when refused.
    """
    if config.workers == 1:
        ssl_context = client_context(config.client)  # a bad file is said before an unknown host
        [share] = Share.divide(config, await Target.resolve(config), 1)
        return await run_here(share.launched(), ssl_context, progress=progress, stop=stop)
    return await run_workers(config, progress, stop)
