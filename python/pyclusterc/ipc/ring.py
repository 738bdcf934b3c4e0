"""The transport under Worker and MessagePort: two shared-memory rings plus a channel.

Each direction has a single-producer ring in a SharedBuffer, so a small message costs
a pickle and a memcpy, not a system call. The SOCK_SEQPACKET channel next to the rings
(channel.py) carries what a ring cannot: messages with fds (SharedBuffers, sockets,
ports, transfers) and large ones, each announced by a MARKER record in the ring so the
order of messages is kept. It is also the doorbell: a reader with nothing to read sets
its ring's ``sleeping`` flag and polls the socket; a writer that sees the flag sends one
empty DOORBELL packet. The socket's hang-up is how a reader learns its peer is gone.
"""
import collections
import os
import select
import socket
import struct
import threading
import time
import weakref

from .._lowlevel.native import check, ffi, lib
from .channel import Channel, ChannelClosed, buffer_from_fd
from ..shared.buffer import SharedBuffer

__all__ = ["Endpoint", "Ring", "endpoint_pair", "wait_any", "ChannelClosed", "MalformedRecord",
           "RING_HEADER_BYTES"]

# Record kinds (channel.py reserves < 32).
DATA = 2
ONLINE = 32
ERROR = 33
MARKER = 34       # the message itself is the next non-doorbell packet on the socket
DOORBELL = 35     # socket only: "the ring has data"
BYTES = 36        # a message that is exactly a bytes object, sent as is (no pickle)
_WRAP = 255       # ring only: the rest of the ring is padding

_RING_BYTES = 1 << 20          # per direction
RING_HEADER_BYTES = _CELLS = 64                    # header: head, tail, sleeping (int64 each), padded
_HEAD, _TAIL, _SLEEPING = 0, 1, 2
_WAKE_FOR_QUIET = 3            # set by the reader: ring the doorbell for quiet records too
_RECORD = struct.Struct("<II")  # payload length, kind
_SPIN_NS = 50_000              # at most, poll the ring this long before sleeping (round trips)
_SPIN_MIN_NS = 2_000           # below this a spin is not worth starting

_load = lib.pc_load_i64
_store = lib.pc_store_i64
_exchange = lib.pc_exchange_i64
_pack_into = _RECORD.pack_into


class MalformedRecord(ChannelClosed):
    """The ring holds a record no writer produces (a length past the data written):
    the link is unusable, so it reads as closed."""


class Ring:
    """One direction. Exactly one thread writes (under Endpoint's lock), one reads."""

    def __init__(self, buf):
        data_bytes = buf.byte_length - _CELLS
        if data_bytes < 64 or data_bytes & (data_bytes - 1):
            raise ValueError(f"a ring needs a SharedBuffer of {_CELLS} + a power of two "
                             f"(>= 64) bytes, not {buf.byte_length}")
        self.buf = buf
        self.cells = memoryview(buf)[:_CELLS]
        self.ptr = ffi.from_buffer(self.cells)
        self.data = memoryview(buf)[_CELLS:]
        self.cap = len(self.data)
        self.mask = self.cap - 1
        self.max_record = self.cap // 4
        self.head = _load(self.ptr, _HEAD)   # reader's position
        self.tail = _load(self.ptr, _TAIL)   # writer's position
        self.seen_tail = self.tail           # the reader's last look at tail
        self.seen_head = self.head           # the writer's last look at head

    def put(self, kind, payload):
        """Append one record; False when the ring has no room for it now."""
        n = len(payload)
        size = 8 + ((n + 7) & ~7)
        tail = self.tail
        off = tail & self.mask
        if off + size > self.cap or self.cap - (tail - self.seen_head) < size:
            return self._put_slow(kind, payload)
        data = self.data
        _pack_into(data, off, n, kind)
        data[off + 8:off + 8 + n] = payload
        self.tail = tail = tail + size
        _store(self.ptr, _TAIL, tail)   # seq-cst: the record is visible first
        return True

    def _put_slow(self, kind, payload):
        # The record wraps around the end, or the reader looked full last time.
        n = len(payload)
        size = 8 + ((n + 7) & ~7)
        tail = self.tail
        off = tail & self.mask
        need = size + (self.cap - off if off + size > self.cap else 0)
        if self.cap - (tail - self.seen_head) < need:
            self.seen_head = _load(self.ptr, _HEAD)
            if self.cap - (tail - self.seen_head) < need:
                return False
        if off + size > self.cap:
            _RECORD.pack_into(self.data, off, 0, _WRAP)
            tail += self.cap - off
            off = 0
        _RECORD.pack_into(self.data, off, n, kind)
        self.data[off + 8:off + 8 + n] = payload
        self.tail = tail + size
        _store(self.ptr, _TAIL, self.tail)
        return True

    def has_data(self):
        if self.head != self.seen_tail:
            return True
        self.seen_tail = _load(self.ptr, _TAIL)
        return self.head != self.seen_tail

    def get(self):
        """(kind, payload bytes) or None."""
        if not self.has_data():
            return None
        head, tail = self.head, self.seen_tail
        if not 0 < tail - head <= self.cap or (head | tail) & 7:
            raise MalformedRecord(f"malformed ring: {tail - head} bytes pending in {self.cap}")
        off = head & self.mask
        n, kind = _RECORD.unpack_from(self.data, off)
        if kind == _WRAP:
            head += self.cap - off
            off = 0
            n, kind = _RECORD.unpack_from(self.data, off)
        size = 8 + ((n + 7) & ~7)
        if head + size > tail or off + size > self.cap:
            raise MalformedRecord(f"malformed ring record: {n} bytes at offset {off}")
        payload = self.data[off + 8:off + 8 + n].tobytes()
        self.head = head + size
        _store(self.ptr, _HEAD, self.head)
        return kind, payload

    def get_all(self):
        """Every ready record as (kind, payload bytes, ()), publishing the new head once;
        and whether a MARKER is among them. One atomic load and one store per batch
        instead of per message: the receive path's cost is per message otherwise."""
        tail = self.seen_tail = _load(self.ptr, _TAIL)
        head = self.head
        if head == tail:
            return [], False
        data, mask, cap, unpack = self.data, self.mask, self.cap, _RECORD.unpack_from
        if not 0 < tail - head <= cap or (head | tail) & 7:
            raise MalformedRecord(f"malformed ring: {tail - head} bytes pending in {cap}")
        out, marker = [], False
        while head != tail:
            off = head & mask
            n, kind = unpack(data, off)
            if kind == _WRAP:
                if off == 0 or head + cap - off > tail:
                    raise MalformedRecord(f"malformed ring record: a wrap at offset {off}")
                head += cap - off
                continue
            size = 8 + ((n + 7) & ~7)
            # A length no writer produces must not send the reader past what was written.
            if head + size > tail or off + size > cap:
                raise MalformedRecord(f"malformed ring record: {n} bytes at offset {off}")
            out.append((kind, data[off + 8:off + 8 + n].tobytes(), ()))
            marker = marker or kind == MARKER
            head += size
        self.head = head
        _store(self.ptr, _HEAD, head)
        return out, marker

    def release(self):
        """Drop this ring's views of its buffer (the buffer stays open)."""
        ffi.release(self.ptr)
        self.cells.release()
        self.data.release()

    def close(self):
        self.release()
        self.buf.close()


class Endpoint:
    """One side of a duplex link: send() from any thread, receive from one at a time."""

    def __init__(self, sock_fd, in_buf, out_buf):
        self.inbox = Ring(in_buf)
        self.outbox = Ring(out_buf)
        self.channel = Channel(sock_fd)
        # The fd closes when nothing uses this endpoint any more (or at close()), so a
        # thread still polling it never sees the number reused.
        self._close_fd = weakref.finalize(self, os.close, sock_fd)
        # Not at interpreter exit: weakref.finalize's own exit hook would close every
        # live endpoint's fd, in whatever order against the atexit hooks that still use
        # them (a pool finishing its work closed its workers' channels under its manager,
        # which replaced them, then waited forever for the replacements). The process's
        # exit closes them anyway.
        self._close_fd.atexit = False
        self.pending = collections.deque()   # socket messages whose MARKER is not read yet
        self.peer_closed = False
        self.closed = False       # shut down: no more sending
        self.released = False     # fd and mappings gone
        self.send_lock = threading.Lock()
        self.read_lock = threading.RLock()
        self.spin_limit_ns = _SPIN_NS   # 0 between threads: a spinning reader holds the GIL
        self.spin_ns = _SPIN_NS         # the current budget, adapted in wait()

    def fileno(self):
        return self.channel.fd

    # -- sending -------------------------------------------------------------------
    def send(self, kind, payload, fds=(), quiet=False):
        """Raises ChannelClosed when the peer is gone (after waiting out a full ring).
        A quiet record (a worker's ONLINE) wakes a sleeping reader only if it asked for
        that (want_quiet_records); otherwise it waits in the ring for the next one."""
        out = self.outbox
        n = len(payload)
        size = 8 + ((n + 7) & ~7)
        with self.send_lock:
            if self.closed:
                raise ChannelClosed("this port is closed")
            tail = out.tail
            off = tail & out.mask
            if fds or n > out.max_record or off + size > out.cap or out.cap - (tail - out.seen_head) < size:
                self._send_slow(kind, payload, fds)
            else:
                # Ring.put's common case inlined: this is the per-message cost of sending.
                data = out.data
                _pack_into(data, off, n, kind)
                data[off + 8:off + 8 + n] = payload
                out.tail = tail = tail + size
                _store(out.ptr, _TAIL, tail)   # seq-cst: the record is visible first
            # seq-cst loads after the tail store: a reader that set either flag before
            # looking at the ring sees this record, or we see its flag.
            if _load(out.ptr, _SLEEPING) and (not quiet or _load(out.ptr, _WAKE_FOR_QUIET)) \
                    and _exchange(out.ptr, _SLEEPING, 0):
                self.channel.send_bytes(b"", DOORBELL)

    def want_quiet_records(self):
        """Be woken for quiet records too (someone listens for the worker's 'online')."""
        _store(self.inbox.ptr, _WAKE_FOR_QUIET, 1)

    def _send_slow(self, kind, payload, fds):
        out = self.outbox
        if fds or len(payload) > out.max_record:
            self.channel.send_bytes(payload, kind, fds)
            kind, payload = MARKER, b""
        if not out.put(kind, payload):
            self._wait_for_room(kind, payload)

    def _wait_for_room(self, kind, payload):
        # Back-pressure: the reader is behind by a whole ring. Wake it (it may be
        # asleep with a doorbell lost to nobody) and poll for room or its hang-up.
        poller = select.poll()
        poller.register(self.channel.fd, 0)     # POLLHUP/POLLERR are always reported
        delay = 0.00005
        while not self.outbox.put(kind, payload):
            if _exchange(self.outbox.ptr, _SLEEPING, 0):
                self.channel.send_bytes(b"", DOORBELL)
            if poller.poll(0):
                raise ChannelClosed("the other end is gone")
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    # -- receiving -----------------------------------------------------------------
    def receive(self):
        """Next (kind, payload, fds) without blocking, or None. ChannelClosed at EOF
        (after every message the peer sent)."""
        if self.released:
            raise ChannelClosed("this end is closed")
        record = self.inbox.get()
        if record is None:
            if self.peer_closed or self.closed:
                raise ChannelClosed("the other end closed the channel")
            return None
        kind, payload = record
        if kind != MARKER:
            return kind, payload, ()
        return self._socket_message()

    def receive_all(self):
        """Every message ready now, in order, as a list of (kind, payload, fds); [] when
        none. ChannelClosed only when there is nothing left to read."""
        if self.released:
            raise ChannelClosed("this end is closed")
        batch, marker = self.inbox.get_all()
        if not batch:
            if self.peer_closed or self.closed:
                raise ChannelClosed("the other end closed the channel")
            return batch
        if marker:
            for i, record in enumerate(batch):
                if record[0] == MARKER:
                    try:
                        batch[i] = self._socket_message()
                    except ChannelClosed:
                        return batch[:i]     # the peer died mid-message; the next call says so
        return batch

    def _socket_message(self):
        while not self.pending:
            self.channel.wait_readable(-1)
            self._drain_socket()
            if self.peer_closed and not self.pending:
                raise ChannelClosed("the other end closed the channel mid-message")
        return self.pending.popleft()

    def _drain_socket(self):
        try:
            while True:
                m = self.channel.receive()
                if m is None:
                    return
                if m[0] != DOORBELL:
                    self.pending.append(m)
        except (ChannelClosed, OSError):
            self.peer_closed = True

    def ready(self):
        return self.closed or self.peer_closed or self.inbox.has_data()

    def wait(self, timeout_ns=-1):
        """Block until receive() has something (or EOF); False on timeout."""
        if self.ready():
            return True
        # Spin only while spinning pays: on a busy host (more runnable threads than CPUs)
        # the writer often is not running, and the spin burns the time slice it needs.
        # The budget halves after each wait a spin would not have caught and doubles
        # after one it would have, within [0, spin_limit_ns].
        start = time.perf_counter_ns()
        spin = self.spin_ns if timeout_ns < 0 else min(self.spin_ns, timeout_ns)
        if spin >= _SPIN_MIN_NS:
            spin_end = start + spin
            while time.perf_counter_ns() < spin_end:
                if self.inbox.has_data():
                    return True
        ptr = self.inbox.ptr
        _exchange(ptr, _SLEEPING, 1)
        try:
            if self.ready():
                return True
            self.channel.wait_readable(timeout_ns)
            self._drain_socket()
            waited = time.perf_counter_ns() - start
            if waited <= self.spin_limit_ns:
                self.spin_ns = min(self.spin_limit_ns, max(2 * self.spin_ns, 2 * _SPIN_MIN_NS))
            else:
                self.spin_ns //= 2
            return self.ready()
        finally:
            _store(ptr, _SLEEPING, 0)

    # -- lifetime ------------------------------------------------------------------
    def shutdown(self):
        """Hang up: the peer reads EOF after our messages; a local wait() wakes."""
        with self.send_lock:
            self.closed = True
            try:
                s = socket.socket(fileno=self.channel.fd)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                finally:
                    s.detach()
            except OSError:
                pass

    def close(self):
        """Release the fd and the mappings (waits for a send in progress)."""
        with self.send_lock:
            if self.released:
                return
            self.closed = self.released = True
            self.channel.closed = True
            self.channel.fd_open = False     # the finalizer owns it
            self._close_fd()
            self.inbox.close()
            self.outbox.close()

    def abandon(self):
        """In a forked child, for an endpoint of the parent's: close our copy of its fd
        (so the peer's hang-up still shows) and never touch it again. The mappings go
        with the process. No lock: another thread may have held it at the fork."""
        if not self.released:
            self.closed = self.released = True
            self.channel.closed = True
            self.channel.fd_open = False
            self._close_fd()

    def fds_for_transfer(self):
        return [self.channel.fd, self.inbox.buf.fileno(), self.outbox.buf.fileno()]

    @classmethod
    def adopt(cls, sock_fd, in_fd, out_fd):
        """An Endpoint over received fds (its socket and two ring regions), which it owns
        on every path: on failure all three are closed."""
        owned = []
        try:
            in_buf = buffer_from_fd(in_fd)
            owned.append(in_buf)
            out_buf = buffer_from_fd(out_fd)
            owned.append(out_buf)
            return cls(sock_fd, in_buf, out_buf)
        except BaseException:
            for buf in owned:
                try:
                    buf.close()
                except BufferError:
                    pass          # a half-made ring still maps it: the GC closes it
            os.close(sock_fd)
            if len(owned) == 0:
                os.close(out_fd)
            raise


def endpoint_pair():
    """Two connected Endpoints (a, b): a's inbox is b's outbox and the other way round."""
    fds = ffi.new("int[2]")
    check(lib.pc_channel_pair(fds), "cannot create a channel pair")
    ring_a, ring_b = SharedBuffer(_CELLS + _RING_BYTES), SharedBuffer(_CELLS + _RING_BYTES)
    # Each endpoint maps the rings on its own, so either side can close independently.
    a = Endpoint(fds[0], ring_a, ring_b)
    b = Endpoint(fds[1], _remap(ring_b), _remap(ring_a))
    return a, b


def _remap(buf):
    return buffer_from_fd(os.dup(buf.fileno()), buf.name)


def wait_any(endpoints, timeout_ns=-1, extra_fds=()):
    """Wait until one of the endpoints is ready() or an extra fd is readable.
    Returns the list of ready endpoints (possibly empty after a wake-up or timeout)."""
    ready = [e for e in endpoints if e.ready()]
    if ready:
        return ready
    for e in endpoints:
        _exchange(e.inbox.ptr, _SLEEPING, 1)
    try:
        ready = [e for e in endpoints if e.ready()]
        if ready:
            return ready
        poller = select.poll()
        for e in endpoints:
            poller.register(e.channel.fd, select.POLLIN)
        for fd in extra_fds:
            poller.register(fd, select.POLLIN)
        poller.poll(None if timeout_ns < 0 else timeout_ns / 1e6)
        for e in endpoints:
            e._drain_socket()
        return [e for e in endpoints if e.ready()]
    finally:
        for e in endpoints:
            _store(e.inbox.ptr, _SLEEPING, 0)
