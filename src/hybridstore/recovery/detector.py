"""Moved: the outage detector belongs to the primary gateway now (`hybridstore.node.detector`)."""

from ..node.detector import OutageDetector, Transition

__all__ = ["OutageDetector", "Transition"]
