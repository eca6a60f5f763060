"""Cold-start evaluation: the catalogue protocol (the list ``/recommend`` serves) and MeLU's
protocol (10 rated query items per user), with the baselines people already use.

Modules: :mod:`~melu.evaluation.metrics` (pure functions), :mod:`~melu.evaluation.catalogue`
and :mod:`~melu.evaluation.query` (the two protocols), :mod:`~melu.evaluation.rankers` and
:mod:`~melu.evaluation.anchors` (catalogue baselines), :mod:`~melu.evaluation.report` (JSON,
Markdown), :mod:`~melu.evaluation.run` (the entry points re-exported here).
"""

from melu.evaluation.metrics import (
    ALL_SUPPORT,
    LOWER_IS_BETTER,
    METRICS,
    RANKING_METRICS,
    SUPPORT_BUCKETS,
)
from melu.evaluation.report import MELU, Report
from melu.evaluation.run import (
    EVAL_SCENARIOS,
    evaluate_catalogue,
    evaluate_checkpoint,
    evaluate_command,
)

__all__ = [
    "ALL_SUPPORT",
    "EVAL_SCENARIOS",
    "LOWER_IS_BETTER",
    "MELU",
    "METRICS",
    "RANKING_METRICS",
    "SUPPORT_BUCKETS",
    "Report",
    "evaluate_catalogue",
    "evaluate_checkpoint",
    "evaluate_command",
]
