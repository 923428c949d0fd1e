"""The server core: ``serve()``, its listeners, the connection pipeline, liveness and metrics.

May import: ``_exceptions``, ``_net``, ``_tls``, ``_engines``, ``_handlers``, ``_config``.
"""

from ._metrics import HANDSHAKE_RESULTS as HANDSHAKE_RESULTS
from ._metrics import METRIC_SLOTS as METRIC_SLOTS
from ._metrics import GCTotals as GCTotals
from ._metrics import Histogram as Histogram
from ._metrics import ProcessTotals as ProcessTotals
from ._metrics import ServerMetrics as ServerMetrics
from ._metrics import serve_metrics as serve_metrics
from ._serve import serve as serve
