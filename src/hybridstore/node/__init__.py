"""The node core: the seams every service builds on — the primary gateway (every primary call, the circuit, the
single liveness prober), the local slot (the one owner of "can SQLite be used?"), the status board (one snapshot
for every view), the router (which tier serves each operation), the protocols services depend on (`core`), and
injected time (`timing`). Built and wired by `hybridstore.compose`."""
