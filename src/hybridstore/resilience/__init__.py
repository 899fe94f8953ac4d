"""The resilience tester: a fault-injecting proxy, scenarios run against a sandbox of the real store, a history
checker (nothing acknowledged lost, nothing applied twice, every node converged), and reports."""

from .scenarios import SCENARIOS

__all__ = ["SCENARIOS"]
