"""The resilience tester: a fault-injecting proxy, scenarios run against a sandbox of the real store, a history
checker (nothing acknowledged lost, nothing applied twice, every node converged), and reports. See
docs/resilience.md.

| module | job |
|---|---|
| `proxy` | `FaultProxy`: the asyncio TCP proxy with Toxiproxy's faults, per direction, counted |
| `history` | what clients invoked and how it ended (ok / fail / unknown), reads, fault windows |
| `checker` | the history against the final states: lost, phantom, duplicated, shrinking, converged, latency |
| `sandbox` | the run's own schema, directories and node ids; leftovers of crashed runs |
| `workload` | writer threads recording into the history |
| `damage` | real damage: garbled SQLite pages, a full file system |
| `child`, `process` | a node in a process of its own (for SIGKILL) and its parent's side |
| `scenario` | what scenarios share: context, result, the common course of a run (`Trial`) |
| `scenarios/` | the scenarios, one module per family; `SCENARIOS` names them in order |
| `runner` | runs scenarios in one sandbox and builds the report |
| `report`, `html` | the terminal table, the JSON file, the HTML page |
| `runs` | runs kept with their reports; the scheduled run |
"""

from .scenarios import SCENARIOS

__all__ = ["SCENARIOS"]
