"""The project's one exception tree.

Everything a *user* can get wrong (a flag, a file, a certificate, a port in use)
raises a subclass of :class:`TLSEchoError` whose message is one complete line;
the CLI prints that line and exits 2.  Programming errors keep their own types.
"""

from __future__ import annotations


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


class ClientError(TLSEchoError):
    """A client connection failed: refused, TLS rejected, reset, timeout."""


class EchoMismatchError(ClientError):
    """The server answered, but not with the bytes we sent."""
