"""The scenarios, in the order a run takes them (the original six first). Names are part of the spec."""

from __future__ import annotations

from ..scenario import Scenario
from .conflicts import SyncConflicts
from .crash import NodeCrash, PrimaryDownLocalCorrupt
from .data import BackupTamper, DuplicateReplay
from .local import DiskFull, LocalCorruption
from .network import Blackhole, FlappingPrimary, HighLatency, PrimaryOutage, ResetMidCommit, StorageLoad
from .recovery import AutoRecovery

ALL: tuple[Scenario, ...] = (
    PrimaryOutage(),
    LocalCorruption(),
    HighLatency(),
    SyncConflicts(),
    AutoRecovery(),
    StorageLoad(),
    Blackhole(),
    FlappingPrimary(),
    NodeCrash(),
    DiskFull(),
    ResetMidCommit(),
    DuplicateReplay(),
    BackupTamper(),
    PrimaryDownLocalCorrupt(),
)
BY_NAME = {s.name: s for s in ALL}
SCENARIOS: tuple[str, ...] = tuple(s.name for s in ALL)
