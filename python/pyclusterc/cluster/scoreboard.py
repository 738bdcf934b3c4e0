"""The scoreboard: one shared region with a 64-byte slot per worker (struct pc_score_slot
in csrc/pc_dispatch.h). A worker writes its own slot (heartbeat, requests, in-flight,
open connections); the primary reads every slot (the `least` policy in C, status and
limits in Python)."""
import socket
import time

from .._lowlevel.native import lib
from ..shared.buffer import BigUint64Array, Uint32Array

SLOT_BYTES = 64
MAX_SLOTS = 1024
# Score slot fields, as indexes into 32- and 64-bit views of a slot (see pc_dispatch.h).
U32_PID, U32_STATE, U32_INFLIGHT, U32_CONNECTIONS = 0, 1, 6, 7
U64_HEARTBEAT, U64_REQUESTS, U64_HANDED = 1, 2, 4


class ScoreSlot:
    """A worker's slot in the scoreboard; the primary's `least` policy reads it."""

    def __init__(self, board, index):
        self.index = index
        self.u32 = Uint32Array(board, index * SLOT_BYTES, SLOT_BYTES // 4)
        self.u64 = BigUint64Array(board, index * SLOT_BYTES, SLOT_BYTES // 8)

    def connections_received(self, count):
        """count connections arrived from the primary: `least` stops counting them as
        queued. Once per batch, straight to the atomics (the hot path)."""
        lib.pc_add_u64(self.u64._ptr, U64_HANDED, count)
        lib.pc_add_u32(self.u32._ptr, U32_CONNECTIONS, count)

    # `requests` counts what servers report through request_finished (HTTP requests);
    # connections are counted apart, so a keep-alive connection is not a request.
    def connection_opened(self):
        self.u32.add(U32_CONNECTIONS, 1)

    def connection_closed(self):
        lib.pc_sub_u32(self.u32._ptr, U32_CONNECTIONS, 1)

    # Per request under ASGI and WSGI: straight to the atomics, like the batch above.
    def request_started(self):
        lib.pc_add_u32(self.u32._ptr, U32_INFLIGHT, 1)

    def request_finished(self):
        lib.pc_sub_u32(self.u32._ptr, U32_INFLIGHT, 1)
        lib.pc_add_u64(self.u64._ptr, U64_REQUESTS, 1)

    def publish(self, requests, inflight, connections):
        """Totals a server keeps itself, published now and then instead of per request."""
        self.u64.store(U64_REQUESTS, requests)
        self.u32.store(U32_INFLIGHT, inflight)
        self.u32.store(U32_CONNECTIONS, connections)

    def clear(self):
        for i in range(len(self.u64)):
            self.u64.store(i, 0)

    def snapshot(self):
        return {"pid": self.u32.load(U32_PID), "inflight": self.u32.load(U32_INFLIGHT),
                "connections": self.u32.load(U32_CONNECTIONS),
                "requests": self.u64.load(U64_REQUESTS)}

    # The heartbeat: a worker's loop stamps it while it makes progress; the primary
    # replaces a worker whose stamp is older than --timeout.
    def beat(self, stamp_ns=None):
        self.u64.store(U64_HEARTBEAT, stamp_ns or time.monotonic_ns())

    def heartbeat_ns(self):
        """The last stamp (time.monotonic_ns()), 0 before the first."""
        return self.u64.load(U64_HEARTBEAT)


class TrackedSocket(socket.socket):
    """An accepted connection that tells the scoreboard when it is closed."""

    slot = None   # the scoreboard slot counting this connection, until it is closed

    def _untrack(self):
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.connection_closed()

    def close(self):
        self._untrack()
        super().close()

    def detach(self):
        # uvloop's transports detach the socket object and close the fd themselves.
        self._untrack()
        return super().detach()
