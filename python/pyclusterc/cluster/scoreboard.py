"""The scoreboard: one shared region with a 256-byte slot per worker (struct
pc_score_slot in csrc/pc_dispatch.h). A worker writes its own slot (heartbeat, requests,
in-flight, open connections, and with metrics on, each response's status class and
duration bucket); the primary reads every slot (the `least` policy in C, status,
metrics and limits in Python)."""
import functools
import socket
import time

from .._lowlevel.native import ffi, lib
from ..shared.buffer import BigUint64Array, Uint32Array

# The layout is C's (struct pc_score_slot, csrc/pc_dispatch.h: the dispatch loop reads
# it too): each field as an index into 32- or 64-bit views of a slot.
SLOT_BYTES = ffi.sizeof("struct pc_score_slot")
MAX_SLOTS = 1024


def _field(name, width):
    offset = ffi.offsetof("struct pc_score_slot", name)
    assert offset % width == 0, f"pc_score_slot.{name} is not {width}-byte aligned"
    return offset // width


U32_PID, U32_STATE = _field("pid", 4), _field("state", 4)
U32_INFLIGHT, U32_CONNECTIONS = _field("inflight", 4), _field("connections", 4)
U64_HEARTBEAT, U64_REQUESTS, U64_HANDED = _field("heartbeat_ns", 8), _field("requests", 8), _field("handed", 8)
U64_DURATION_US, U64_STATUS, U64_BUCKETS = (_field("duration_us", 8), _field("status_classes", 8),
                                            _field("duration_buckets", 8))
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
# Upper bounds of the duration buckets, seconds (C's, pc_score_bucket_bound_us); the last
# bucket has none (+Inf).
_BUCKETS = len(ffi.new("struct pc_score_slot *").duration_buckets)
BUCKET_BOUNDS = tuple(lib.pc_score_bucket_bound_us(i) / 1e6 for i in range(_BUCKETS - 1)) + (float("inf"),)


class ScoreSlot:
    """A worker's slot in the scoreboard; the primary's `least` policy reads it."""

    def __init__(self, board, index):
        self.index = index
        self.u32 = Uint32Array(board, index * SLOT_BYTES, SLOT_BYTES // 4)
        self.u64 = BigUint64Array(board, index * SLOT_BYTES, SLOT_BYTES // 8)
        # A pointer that keeps the mapping alive itself (from_buffer, not a cast): record
        # below holds only it, and may outlive this object. Public for the servers' one
        # call per response that also writes the access line (pc_lines_add_request).
        self.pointer = ffi.from_buffer("struct pc_score_slot *",
                                     memoryview(board)[index * SLOT_BYTES:(index + 1) * SLOT_BYTES])
        # The per-request calls are the C functions themselves, bound to this slot: no
        # Python frame per request, relaxed atomic adds, no IPC (the primary reads them).
        # record(status, duration_us) and record_since(status, started): one
        # response, its status class and duration bucket; record_since reads the clock
        # in C (started as time.monotonic(): a float converts faster than an ns int).
        self.record = functools.partial(lib.pc_score_record, self.pointer)
        self.record_since = functools.partial(lib.pc_score_record_since, self.pointer)
        # request_started() / request_finished(): in-flight, and requests counted as
        # servers report them (HTTP requests; a keep-alive connection is not one).
        self.request_started = functools.partial(lib.pc_score_request_started, self.pointer)
        self.request_finished = functools.partial(lib.pc_score_request_finished, self.pointer)
        # With metrics on, one call at each end: request_started_at() returns the start
        # (time.monotonic()'s clock) and request_finished_since(status, started)
        # is request_finished and record_since together.
        self.request_started_at = functools.partial(lib.pc_score_request_started_at, self.pointer)
        self.request_finished_since = functools.partial(lib.pc_score_request_finished_since, self.pointer)

    def connections_received(self, count):
        """count connections arrived from the primary: `least` stops counting them as
        queued. Once per batch, straight to the atomics (the hot path)."""
        self.u64.add(U64_HANDED, count)
        self.u32.add(U32_CONNECTIONS, count)

    def connection_opened(self):
        self.u32.add(U32_CONNECTIONS, 1)

    def connection_closed(self):
        self.u32.sub(U32_CONNECTIONS, 1)

    def publish(self, requests, inflight, connections):
        """Totals a server keeps itself, published now and then instead of per request."""
        self.u64.store(U64_REQUESTS, requests)
        self.u32.store(U32_INFLIGHT, inflight)
        self.u32.store(U32_CONNECTIONS, connections)

    def clear(self):
        for i in range(len(self.u64)):
            self.u64.store(i, 0)

    def snapshot(self):
        u64 = self.u64
        counts = [u64.load(U64_BUCKETS + i) for i in range(_BUCKETS)]
        score = {"pid": self.u32.load(U32_PID), "inflight": self.u32.load(U32_INFLIGHT),
                 "connections": self.u32.load(U32_CONNECTIONS), "requests": u64.load(U64_REQUESTS)}
        if any(counts):  # recorded (metrics on): the histogram, cumulative, and the classes
            cumulative, total = [], 0
            for bound, count in zip(BUCKET_BOUNDS, counts):
                total += count
                cumulative.append((bound, total))
            score["latency_buckets"] = cumulative
            score["latency_sum"] = u64.load(U64_DURATION_US) / 1e6
            score["status_classes"] = {name: u64.load(U64_STATUS + i) for i, name in enumerate(STATUS_CLASSES)
                                       if u64.load(U64_STATUS + i)}
        return score

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
