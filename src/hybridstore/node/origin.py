"""`OriginGuard`: a node id that wrote before, starting on a new data directory, orders its writes after its old ones.

Replays are recognised by the primary from what a node id wrote last (the record row, its replay marks, its
watermark: see docs/sync.md), so a write of node N stamped below N's newest stamp on the primary is taken for a
replay and changes nothing. A node's clock starts after the largest stamp of its own data directory; a new data
directory has none. If it is given a node id that wrote before (``node_id=``, ``HYBRIDSTORE_NODE_ID``) on a
machine whose clock runs behind the old one's, its first writes would be acknowledged and then dropped as replays.

So before a node with no stamp of its own writes to the primary (write-through) or pushes, it asks the primary
once for the newest stamp of its node id (a full scan of ``records``: paid once, on a new data directory, which
then loads every record anyway), moves its clock past it, and re-stamps the writes it queued before asking.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..clock import HybridClock, StampsAfter

if TYPE_CHECKING:
    from .gateway import PrimaryGateway
    from .slot import LocalSlot

log = logging.getLogger("hybridstore.sync")


class OriginGuard:
    def __init__(
        self, node_id: str, clock: HybridClock, gateway: PrimaryGateway, slot: LocalSlot, *, needed: bool
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._gateway = gateway
        self._slot = slot
        self._settled = not needed
        self._lock = threading.Lock()
        self.restamped = 0  # queued writes given a new stamp (for tests and logs)

    @property
    def settled(self) -> bool:
        """True once this node's stamps are known to order after everything its node id wrote before."""
        return self._settled

    def ensure(self) -> None:
        """Ask the primary once (through the gateway: `PrimaryUnavailableError` if it cannot be asked, and the
        next call asks again); no-op once settled."""
        if self._settled:
            return
        with self._lock:
            if self._settled:
                return
            newest = self._gateway.call(lambda p: p.origin_max_hlc(self._node_id))
            if newest is not None:
                self._clock.observe(newest)
                local = self._slot.tier
                if local is not None:
                    self.restamped = local.restamp_pending(self._node_id, newest, self._next_after(newest))
                    if self.restamped:
                        log.warning(
                            "node id %s wrote before, from another data directory, with stamps up to %s: %d queued "
                            "write(s) re-stamped after them",
                            self._node_id,
                            newest,
                            self.restamped,
                        )
            self._settled = True

    def _next_after(self, newest: str) -> StampsAfter:
        return StampsAfter(self._clock, newest)
