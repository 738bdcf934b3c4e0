"""Hypothesis fuzzing of the Python side of the channel: the fd-carrying unpickler
(ipc.channel.loads with the workers' Unpickler), the packet reader (Channel.receive,
fragments and fds) and the shared-memory ring reader (ipc.ring.Ring). Malformed input
must end in an exception or a value, never a crash or a hang, and every fd received
is closed or owned by what was returned.

The examples below (@example) are the seed corpus: frames that once leaked or hung.
The normal suite runs 60 cases a test (derandomized, so CI is repeatable); for a
longer, random run:
    PYCLUSTERC_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/ipc -q
"""
import gc
import io
import os
import pickle
import socket
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyclusterc import SharedBuffer
from pyclusterc._lowlevel.native import ffi, lib
from pyclusterc.ipc import channel
from pyclusterc.ipc.ring import RING_HEADER_BYTES, MalformedRecord, Ring
from pyclusterc.workers.ports import Unpickler

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=int(os.environ.get("PYCLUSTERC_FUZZ_EXAMPLES", "60")),
                deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize="PYCLUSTERC_FUZZ_EXAMPLES" not in os.environ)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class Restricted(Unpickler):
    """The decoder under test, with find_class limited to harmless builtins: random
    bytes must not be able to call arbitrary functions (os.system) during the fuzz.
    The fd references (persistent_load) are the real ones."""

    SAFE = {("builtins", name) for name in ("list", "dict", "set", "frozenset", "tuple",
                                              "bytearray", "int", "str", "complex", "slice")}

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the fuzz")


def make_fds(kinds):
    """Real fds of the kinds a peer could attach: a SharedBuffer's region, a pipe end,
    a socket, /dev/null."""
    fds = []
    for kind in kinds:
        if kind == "region":
            buf = SharedBuffer(64)
            fds.append(os.dup(buf.fileno()))
            buf.close()
        elif kind == "pipe":
            r, w = os.pipe2(os.O_CLOEXEC)
            os.close(w)
            fds.append(r)
        elif kind == "socket":
            a, b = socket.socketpair()
            b.close()
            fds.append(a.detach())
        else:
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    return fds


def decode_and_drop(payload, fds):
    """Decode; whatever comes back is dropped (its fds with it) before returning."""
    try:
        value = channel.loads(payload, list(fds), Restricted)
    except Exception:  # noqa: BLE001  (any exception is an acceptable verdict)
        return
    _close_all(value)


def _close_all(value, depth=0):
    if depth > 50:
        return
    if isinstance(value, (SharedBuffer, socket.socket)):
        try:
            value.close()
        except BufferError:
            pass
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _close_all(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _close_all(item, depth + 1)
    elif hasattr(value, "close"):
        try:
            value.close()
        except Exception:  # noqa: BLE001
            pass


class Ref:
    def __init__(self, pid):
        self.pid = pid


class RefPickler(pickle.Pickler):
    """Writes any persistent id a (buggy or hostile) peer could write."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Ref) else None


index = st.one_of(st.integers(-2, 5), st.booleans(), st.none(), st.text(max_size=2),
                  st.floats(allow_nan=False))
meta = st.one_of(st.integers(-1, 1 << 20), st.tuples(st.sampled_from(["numpy", "bytes", "x"]),
                                                     st.integers(-1, 100)), st.none())
pid = st.one_of(
    st.tuples(st.just("SharedBuffer"), index, st.one_of(st.none(), st.text(max_size=5))),
    st.tuples(st.just("socket"), index),
    st.tuples(st.just("port"), st.lists(index, max_size=4), st.none()),
    st.tuples(st.just("buffer"), st.lists(index, max_size=2), meta),
    st.tuples(st.sampled_from(["bogus", ""]), index),
    st.just(()), st.integers(), st.text(max_size=4),
)
fd_kinds = st.lists(st.sampled_from(["region", "pipe", "socket", "null"]), max_size=4)


@FUZZ
@given(pids=st.lists(pid, min_size=1, max_size=5), kinds=fd_kinds, cut=st.integers(0, 64))
@example(pids=[("SharedBuffer", 0, None), ("SharedBuffer", 0, None)], kinds=["region"], cut=0)
@example(pids=[("port", [0, 1, 2], None)], kinds=["socket", "pipe", "region"], cut=0)
@example(pids=[("socket", 1)], kinds=["socket", "pipe"], cut=0)
@example(pids=[("buffer", [0], ("numpy", 3))], kinds=["region"], cut=0)
@example(pids=[("SharedBuffer", -1, None)], kinds=["region"], cut=0)
def test_fd_references_never_leak_or_double_close(pids, kinds, cut):
    payload_io = io.BytesIO()
    RefPickler(payload_io, protocol=5).dump([Ref(p) for p in pids])
    payload = payload_io.getvalue()
    if cut:
        payload = payload[:max(0, len(payload) - cut)]     # truncated frames too
    before = open_fds()
    fds = make_fds(kinds)
    decode_and_drop(payload, fds)
    gc.collect()
    assert open_fds() == before, f"fds leaked or closed twice: {pids} with {kinds}"


@FUZZ
@given(payload=st.binary(max_size=200), kinds=fd_kinds)
@example(payload=b"\x80\x05Q.", kinds=["pipe"])                # BINPERSID of nothing
@example(payload=b"\x80\x05K\x00\x85Q.", kinds=["region"])     # a bare int as pid
@example(payload=b"\x80\x05(X\x06\x00\x00\x00socketK\x00tQ.", kinds=["pipe"])
def test_random_bytes_end_in_a_value_or_an_exception(payload, kinds):
    before = open_fds()
    decode_and_drop(payload, make_fds(kinds))
    gc.collect()
    assert open_fds() == before


# ---- packets on a real channel ----------------------------------------------------------------
packet = st.tuples(st.sampled_from([channel.KIND_FRAGMENT, channel.KIND_DATA,
                                    channel.KIND_CONTROL, 3, 99]),
                   st.binary(max_size=300), st.integers(0, 3))


@FUZZ
@given(packets=st.lists(packet, max_size=8), hang_up=st.booleans())
@example(packets=[(channel.KIND_FRAGMENT, b"part", 2), (channel.KIND_DATA, b"rest", 0)],
         hang_up=False)
@example(packets=[(channel.KIND_FRAGMENT, b"x", 1)], hang_up=True)
def test_packets_with_stray_fds_are_closed(packets, hang_up):
    before = open_fds()
    pair = ffi.new("int[2]")
    assert lib.pc_channel_pair(pair) == 0
    sender_fd, receiver = pair[0], channel.Channel(pair[1])
    try:
        for seq, (kind, data, nfds) in enumerate(packets, 1):
            fds = make_fds(["null"] * nfds)
            cfds = ffi.new("int[]", fds) if fds else ffi.NULL
            rc = lib.pc_channel_send(sender_fd, kind, seq, data or ffi.NULL, len(data), cfds, nfds)
            for fd in fds:
                os.close(fd)             # the receiver has its own copies now
            assert rc == 0
        if hang_up:
            os.close(sender_fd)
            sender_fd = -1
        while True:
            try:
                message = receiver.receive()
            except channel.ChannelClosed:
                break
            if message is None:
                break
            for fd in message[2]:
                os.close(fd)
    finally:
        if sender_fd >= 0:
            os.close(sender_fd)
        receiver.close()
    assert open_fds() == before


# ---- the ring reader ---------------------------------------------------------------------------
RING_DATA = 256


@FUZZ
@given(data=st.binary(min_size=RING_DATA, max_size=RING_DATA),
       head=st.integers(0, 4 * RING_DATA), pending=st.integers(-8, 2 * RING_DATA),
       records=st.lists(st.tuples(st.integers(0, 600), st.sampled_from([2, 34, 36, 255, 7])),
                        max_size=6))
@example(data=b"\x00" * RING_DATA, head=0, pending=16, records=[(1 << 20, 2)])     # length past the tail
@example(data=b"\x00" * RING_DATA, head=200, pending=64, records=[(0, 255)])       # wrap, then garbage
@example(data=b"\x00" * RING_DATA, head=0, pending=8, records=[(0, 255)])          # wrap at offset 0
def test_ring_reader_ends_on_malformed_records(data, head, pending, records):
    buf = SharedBuffer(RING_HEADER_BYTES + RING_DATA)
    try:
        view = memoryview(buf)
        body = bytearray(data)
        offset = head % RING_DATA
        for length, kind in records:     # headers a confused writer could leave
            if offset + 8 > RING_DATA:
                break
            struct.pack_into("<II", body, offset, length, kind)
            offset += 8 + ((min(length, 64) + 7) & ~7)
        view[RING_HEADER_BYTES:] = bytes(body)
        struct.pack_into("<qq", view, 0, head, head + pending)
        view.release()
        for reader in ("get_all", "get"):
            ring = Ring(buf)
            try:
                for _ in range(RING_DATA):   # each call consumes >= 8 bytes or ends the link
                    try:
                        got = ring.get_all()[0] if reader == "get_all" else ring.get()
                    except MalformedRecord:
                        break
                    if not got:
                        break
                else:
                    pytest.fail("the ring reader kept returning records past what was written")
            finally:
                ring.release()
            with memoryview(buf) as header:   # the next reader starts over
                struct.pack_into("<q", header, 0, head)
    finally:
        gc.collect()
        buf.close()
