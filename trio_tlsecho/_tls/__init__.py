"""TLS policy, peer identity, allow-lists and the development PKI.

Owns every ``ssl.SSLContext`` the project builds (from files, never mutated after),
what a verified peer certificate says (:class:`PeerIdentity`), who may connect
beyond "signed by our CA" (:class:`AllowList`), TLS errors in words and labels, and
the ``certs`` PKI, and the C object under an ``ssl.SSLSocket`` for hot paths
(:func:`ssl_io`).  Nothing else here does I/O on a connection.
May import: ``_exceptions`` only.
"""

from ._context import ServerTLSSettings as ServerTLSSettings
from ._context import client_context as client_context
from ._context import server_context as server_context
from ._errors import describe_tls_error as describe_tls_error
from ._files import TLSFiles as TLSFiles
from ._identity import IdentityCache as IdentityCache
from ._identity import PeerIdentity as PeerIdentity
from ._identity import peer_identity as peer_identity
from ._pki import CA_DAYS as CA_DAYS
from ._pki import DEFAULT_DAYS as DEFAULT_DAYS
from ._pki import DEFAULT_SERVER_NAMES as DEFAULT_SERVER_NAMES
from ._pki import IssuedFiles as IssuedFiles
from ._pki import has_certificates as has_certificates
from ._pki import make_dev_pki as make_dev_pki
from ._pki import revoke as revoke
from ._policy import AllowList as AllowList
from ._sslio import SSLIO as SSLIO
from ._sslio import ssl_io as ssl_io
