"""Framed messages over a worker's SOCK_SEQPACKET channel (the C side is csrc/channel.c).

Objects travel pickled. A SharedBuffer (or a typed array over one) and a socket travel
by fd (SCM_RIGHTS), so the receiver maps the same memory or owns the same connection;
nothing is copied. Payloads larger than one packet are sent as fragments, in order.
"""
import collections
import copyreg
import errno
import io
import os
import pickle
import socket
import threading

from .._lowlevel.native import EAGAIN, EINTR, call_restarting, ffi, lib, os_error
from ..shared.buffer import SharedBuffer, TypedArray

__all__ = ["Channel", "ChannelClosed", "KIND_DATA", "KIND_CONTROL", "KIND_CONN", "Pickler",
           "Unpickler", "dumps", "loads", "pickle_with_fds", "buffer_from_fd", "socket_from_fd"]

KIND_CONN = lib.PC_MSG_CONN        # an accepted connection from the primary's loop
KIND_DATA = lib.PC_MSG_DATA        # a user message (pickle)
KIND_FRAGMENT = 16                 # a leading part of a DATA or CONTROL payload
KIND_CONTROL = 17                  # pyclusterc's own requests and replies (pickle)

MAX_FDS = lib.PC_CHANNEL_MAX_FDS


_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


class ChannelClosed(ConnectionError):
    """The other end of the channel is gone."""


def _reduce_typed_array(ta):
    return type(ta), (ta.buffer, ta.byte_offset, ta.length)


def buffer_from_fd(fd, name=None):
    """A SharedBuffer mapping the memory behind a received fd. It takes the fd on every
    path: on failure (not a pyclusterc region) the fd is closed."""
    return SharedBuffer.from_fd(fd, name)


def socket_from_fd(fd):
    """A socket owning a received fd; on failure (not a socket) the fd is closed."""
    try:
        return socket.socket(fileno=fd)
    except BaseException:
        os.close(fd)
        raise


class Pickler(pickle.Pickler):
    """Pickles SharedBuffers and sockets as references to fds sent alongside. Combined
    with another Pickler class (cloudpickle's), its dispatch table still applies."""

    def __init__(self, file, fds):
        # Before Pickler.__init__: the C pickler reads dispatch_table only there.
        typed_arrays = {cls: _reduce_typed_array for cls in _typed_array_classes()}
        self.dispatch_table = collections.ChainMap(
            typed_arrays, getattr(self, "dispatch_table", copyreg.dispatch_table))
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.fds = fds

    def persistent_id(self, obj):
        if isinstance(obj, SharedBuffer):
            return ("SharedBuffer", self._attach(obj.fileno()), obj.name)
        if isinstance(obj, socket.socket):
            return ("socket", self._attach(obj.fileno()))
        return None

    def _attach(self, fd):
        if len(self.fds) >= MAX_FDS:
            raise ValueError(f"a message can carry at most {MAX_FDS} SharedBuffers and sockets")
        self.fds.append(fd)
        return len(self.fds) - 1


class Unpickler(pickle.Unpickler):
    """Resolves the Pickler's fd references. Each received fd gets one owner at most;
    loads() closes the ones nothing claimed, whatever the payload says."""

    def __init__(self, file, fds):
        super().__init__(file)
        self.fds = fds
        self.used = set()

    def claim(self, *indices):
        """The fds at indices (distinct, not claimed yet), now owned by the caller, who
        closes them on every path. Nothing is claimed when one index is bad."""
        for index in indices:
            if type(index) is not int or not 0 <= index < len(self.fds) or index in self.used \
                    or indices.count(index) > 1:
                raise pickle.UnpicklingError(f"fd reference {index!r} names none of the "
                                             f"{len(self.fds)} unclaimed fds received")
        self.used.update(indices)
        return [self.fds[i] for i in indices]

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 2:
            raise pickle.UnpicklingError(f"malformed fd reference {pid!r}")
        kind = pid[0]
        if kind == "SharedBuffer" and len(pid) == 3 and (pid[2] is None or isinstance(pid[2], str)):
            return buffer_from_fd(*self.claim(pid[1]), pid[2])
        if kind == "socket" and len(pid) == 2:
            return socket_from_fd(*self.claim(pid[1]))
        raise pickle.UnpicklingError(f"unknown fd reference {pid!r}")


def _typed_array_classes():
    stack, found = [TypedArray], []
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def pickle_with_fds(obj, pickler=None):
    """Pickle obj; returns (payload, fds). pickler(file, fds) makes the Pickler (workers
    add ports, transfers and by-value functions). Errors propagate as raised."""
    fds = []
    buf = io.BytesIO()
    (pickler or Pickler)(buf, fds).dump(obj)
    return buf.getvalue(), fds


def dumps(obj, pickler=None):
    """pickle_with_fds for a message: a failure is a TypeError naming the object."""
    try:
        return pickle_with_fds(obj, pickler)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"cannot send {type(obj).__name__}: it is not picklable ({e})") from None


def loads(payload, fds, unpickler=None):
    """Unpickle a payload; fds not claimed by the object are closed."""
    unpickler = (unpickler or Unpickler)(io.BytesIO(payload), fds)
    try:
        return unpickler.load()
    finally:
        for i, fd in enumerate(fds):
            if i not in unpickler.used:
                os.close(fd)


class Channel:
    """One end of a worker channel. Thread-safe for senders; one reader at a time."""

    def __init__(self, fd):
        self.fd = fd
        self.max_payload = lib.pc_channel_max_payload(fd)
        if self.max_payload < 0:
            raise os_error(self.max_payload, f"channel fd {fd}")
        self._send_lock = threading.Lock()
        self._seq = 0
        # Not zeroed: pages are only touched (and only count in the worker's memory)
        # as large messages arrive.
        self._recv_buf = _new_uncleared("uint8_t[]", self.max_payload)
        self._recv_fds = ffi.new("int[]", MAX_FDS)
        self._recv_out = ffi.new("uint32_t[3]")   # kind, length, nfds
        self._recv_seq = ffi.new("uint64_t *")
        self._partial = []
        self.closed = False       # close() was called (EOF alone does not set it)
        self.fd_open = True       # close() still has to close the fd

    # -- sending -----------------------------------------------------------------
    def send_object(self, obj, kind=KIND_DATA):
        payload, fds = dumps(obj)
        self.send_bytes(payload, kind, fds)

    def send_bytes(self, payload, kind=KIND_DATA, fds=()):
        limit = self.max_payload
        with self._send_lock:
            view = memoryview(payload)
            while len(view) > limit:
                self._send_packet(KIND_FRAGMENT, view[:limit], ())
                view = view[limit:]
            self._send_packet(kind, view, fds)

    def _send_packet(self, kind, data, fds):
        self._seq += 1
        cfds = ffi.new("int[]", list(fds)) if fds else ffi.NULL
        cdata = ffi.from_buffer(data) if len(data) else ffi.NULL
        while True:
            rc = lib.pc_channel_send(self.fd, kind, self._seq, cdata, len(data), cfds, len(fds))
            if rc != EAGAIN:
                break
            # The peer's queue is full: wait for room rather than drop anything.
            call_restarting(lambda left: lib.pc_channel_wait_writable(self.fd, left), -1)
        if rc == -errno.EPIPE or rc == -errno.ECONNRESET:
            raise ChannelClosed("the other end of the channel is gone")
        if rc < 0:
            raise os_error(rc, "channel send")

    # -- receiving ---------------------------------------------------------------
    def receive(self):
        """Next complete message without blocking: (kind, payload, fds) or None.

        Raises ChannelClosed at EOF."""
        while True:
            out = self._recv_out
            rc = lib.pc_channel_recv(self.fd, ffi.cast("uint32_t *", out), self._recv_seq,
                                     self._recv_buf, self.max_payload, out + 1, self._recv_fds, ffi.cast("int *", out + 2))
            if rc == EAGAIN:
                return None
            if rc == 1:
                # Not self.closed: that would make close() skip the fd, which stays ours
                # to close (a primary leaked one per worker exit this way).
                raise ChannelClosed("the other end of the channel closed it")
            if rc == EINTR:
                continue
            if rc < 0:
                raise os_error(rc, "channel receive")
            kind, length, nfds = out[0], out[1], out[2]
            data = ffi.buffer(self._recv_buf, length)[:]
            fds = [self._recv_fds[i] for i in range(nfds)]
            if kind == KIND_FRAGMENT:
                for fd in fds:            # fds ride on the last packet only: these are strays
                    os.close(fd)
                self._partial.append(data)
                continue
            if self._partial:
                self._partial.append(data)
                data, self._partial = b"".join(self._partial), []
            return kind, data, fds

    def wait_readable(self, timeout_ns=-1):
        rc = call_restarting(lambda left: lib.pc_channel_wait_readable(self.fd, left), timeout_ns)
        return rc == 0

    def close(self):
        """Close the fd (once; Endpoint.close hands it to its finalizer instead)."""
        self.closed = True
        if self.fd_open:
            self.fd_open = False
            os.close(self.fd)
