"""The recovery service: health monitoring, failure detection, recovery strategies and alerts.

``store.recovery`` is a `RecoveryService`, created and started by the store when it opens.
"""

from __future__ import annotations

from .alerts import ALERT_KINDS, Alert, AlertBook
from .detector import OutageDetector
from .history import StrategyEvent
from .rebuild import RebuildReport
from .service import RecoveryService, Thresholds

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertBook",
    "OutageDetector",
    "RebuildReport",
    "RecoveryService",
    "StrategyEvent",
    "Thresholds",
]
