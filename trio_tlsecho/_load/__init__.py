"""The load generator: many mTLS clients, exact statistics, worker processes.

May import: ``_exceptions``, ``_program``, ``_net``, ``_tls``, ``_config``.
"""

from ._config import DEFAULT_DURATION as DEFAULT_DURATION
from ._config import LoadConfig as LoadConfig
from ._config import Progress as Progress
from ._config import SizeRange as SizeRange
from ._results import RunResult as RunResult
from ._results import merge_results as merge_results
from ._results import parameters as parameters
from ._run import run_load as run_load
from ._stats import LoadReport as LoadReport
from ._stats import format_progress as format_progress
from ._stats import format_report as format_report
