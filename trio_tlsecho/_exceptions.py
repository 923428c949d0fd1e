"""The project's one exception tree.

Everything a *user* can get wrong (a flag, a file, a certificate, a port in use)
raises a subclass of :class:`TLSEchoError` whose message is one complete line;
the CLI prints that line and exits 2.  Programming errors keep their own types.
"""

from __future__ import annotations

import errno
import socket


class TLSEchoError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(TLSEchoError, ValueError):
    """A configuration value, flag or file is unusable."""


class CertificateError(ConfigError):
    """A certificate, key or CA file cannot be loaded or does not fit."""


class HandlerNotFoundError(ConfigError, LookupError):
    """A handler name or ``module:attr`` reference did not resolve."""


class ListenError(TLSEchoError, OSError):
    """A listening socket could not be bound (address in use, bad host, ...)."""


class UpstreamError(TLSEchoError):
    """A handler's own upstream failed: a target refused, timed out, reset (``forward``).

    Not the client's fault and not a handler bug: the server counts it apart
    (``tlsecho_upstream_errors``) and logs its one line as a warning, no traceback.
    """


class ClientError(TLSEchoError):
    """A client connection failed: refused, TLS rejected, reset, timeout."""


class EchoMismatchError(ClientError):
    """The server answered, but not with the bytes we sent."""


def user_error(exc: BaseException) -> TLSEchoError | None:
    """The user mistake that *exc* reports, or None if it is (or holds) anything else.

    A process's one-line error message comes from here: trio wraps errors from
    nursery bodies in ExceptionGroups, and a group whose leaves are all our own
    errors is still a user error, reported by its first leaf.
    """
    if isinstance(exc, TLSEchoError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(TLSEchoError)
        if matched is not None and rest is None:
            leaf = leaves(matched)[0]
            return leaf if isinstance(leaf, TLSEchoError) else None
    return None


def causes(exc: BaseException, *, limit: int = 64) -> list[BaseException]:
    """*exc*, then what caused it: ``__cause__``/``__context__`` chains and group members, in order.

    The one walk over exception chains: trio wraps an ``ssl.SSLError`` in
    ``BrokenResourceError``, nurseries wrap errors in groups, and what a log line or a
    metric label needs is usually some levels down.  Each exception once; bounded.
    """
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < limit:
        cur = todo.pop(0)
        if any(cur is seen for seen in found):
            continue
        found.append(cur)
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
        todo.extend(e for e in (cur.__cause__, cur.__context__) if e is not None)
    return found


def connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in a user's words, from the ``OSError`` under
    *exc* (``open_tcp_stream`` raises a summary whose causes hold the real ones): the
    one wording of the client and the load generator."""
    errors = [e for e in causes(exc) if isinstance(e, OSError)]
    errnos = {e.errno for e in errors}
    if errno.ECONNREFUSED in errnos:
        return "connection refused (is the server running?)"
    if errno.ENOENT in errnos:  # a UNIX socket's path
        return "no such socket (is the server running?)"
    unknown = next((e for e in errors if isinstance(e, socket.gaierror)), None)
    if unknown is not None:
        return f"unknown host ({unknown.strerror})"
    return next((e.strerror for e in errors if e.strerror), None) or str(exc)


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in *group* and its nested groups (not their causes): what a log line names."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
