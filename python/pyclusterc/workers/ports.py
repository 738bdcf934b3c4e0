"""Ports: message delivery over an ``ipc.ring.Endpoint``, and how messages are pickled.

    sender thread                          receiving side
    post_message(obj, transfer)            pull: receive()/iteration -> pump() reads a batch
      encode(): plain pickle, or the             from the endpoint into the queue, in order
      fd-carrying Pickler (SharedBuffers,  push: on("message") starts one reader thread that
      sockets, ports, transfers) ---------->      pumps and calls listeners as records arrive
      Endpoint.send(kind, payload, fds)

A message that does not unpickle on arrival becomes a ``messageerror`` (push) or is
raised where it falls in the stream (pull); the stream goes on.
"""
import asyncio
import collections
import pickle
import socket
import sys
import threading
import time

from .._lowlevel.events import EventEmitter
from ..ipc import channel
from ..ipc.ring import BYTES, DATA, ChannelClosed, Endpoint, endpoint_pair
from ..shared.buffer import SharedBuffer
from .errors import WorkerError

__all__ = ["Port", "MessagePort", "MessageChannel", "receive_message_on_port", "NeedsFds",
           "encode", "decode", "Pickler"]

class NeedsFds(Exception):
    """Raised by objects that only a fd-passing pickler can carry."""


class Pickler(channel.Pickler):
    def __init__(self, file, fds, transfers):
        super().__init__(file, fds)
        self.transfers = transfers

    def persistent_id(self, obj):
        entry = self.transfers.get(id(obj))
        if entry is not None:
            tag, fds, meta = entry
            return (tag, [self._attach(fd) for fd in fds], meta)
        if isinstance(obj, MessagePort):
            raise TypeError("a MessagePort in a message must also be listed in transfer=[...]")
        return super().persistent_id(obj)


class Unpickler(channel.Unpickler):
    def persistent_load(self, pid):
        tag = pid[0] if isinstance(pid, tuple) and pid else None
        if tag == "port" and len(pid) == 3 and isinstance(pid[1], list) and len(pid[1]) == 3:
            return MessagePort._adopt(Endpoint.adopt(*self.claim(*pid[1])))
        if tag == "buffer" and len(pid) == 3 and isinstance(pid[1], list) and len(pid[1]) == 1:
            buf = channel.buffer_from_fd(*self.claim(*pid[1]))
            kind, meta = pid[2]
            if kind == "numpy":
                import numpy
                dtype, shape = meta
                return numpy.frombuffer(buf, dtype=dtype, count=int(numpy.prod(shape))).reshape(shape)
            return memoryview(buf)[:meta]
        return super().persistent_load(pid)


def _prepare_transfers(transfer):
    """Map id(obj) -> (tag, fds, meta); returns it and the cleanups to run after sending."""
    entries, after_send = {}, []
    for obj in transfer:
        if isinstance(obj, MessagePort):
            obj._check_transferable()
            entries[id(obj)] = ("port", obj._endpoint.fds_for_transfer(), None)
            after_send.append(obj._detach)
            continue
        if isinstance(obj, (SharedBuffer, socket.socket)):
            continue   # they travel by fd anyway (shared, not moved)
        buf, meta = _as_shared_copy(obj)
        entries[id(obj)] = ("buffer", [buf.fileno()], meta)
        after_send.append(buf.close)
        if isinstance(obj, bytearray):
            after_send.append(obj.clear)   # the closest Python has to detaching it
    return entries, after_send


def _as_shared_copy(obj):
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        arr = numpy.ascontiguousarray(obj)
        buf = SharedBuffer(max(arr.nbytes, 1))
        numpy.frombuffer(buf, dtype=numpy.uint8, count=arr.nbytes)[:] = arr.reshape(-1).view(numpy.uint8)
        return buf, ("numpy", (arr.dtype.str, arr.shape))
    if isinstance(obj, pickle.PickleBuffer):
        obj = obj.raw()
    try:
        view = memoryview(obj).cast("B")
    except TypeError:
        raise TypeError(f"transfer=[...] takes bytes-like objects, numpy arrays and MessagePorts, "
                        f"not {type(obj).__name__}") from None
    buf = SharedBuffer(max(len(view), 1))
    buf[:len(view)] = view
    return buf, ("bytes", len(view))


def encode(obj, transfer=()):
    """(payload, fds, after_send) for obj; plain pickle when nothing needs an fd."""
    if not transfer:
        try:
            return pickle.dumps(obj, 5), (), ()
        except (TypeError, AttributeError, pickle.PicklingError, NeedsFds):
            pass   # SharedBuffers, sockets and ports refuse plain pickle: pass their fds
    entries, after_send = _prepare_transfers(transfer)
    payload, fds = channel.dumps(obj, lambda f, fds: Pickler(f, fds, entries))
    return payload, fds, after_send


_dumps = pickle.dumps


def decode(payload, fds):
    if not fds:
        return pickle.loads(payload)
    return channel.loads(payload, list(fds), Unpickler)


# ---- ports ----------------------------------------------------------------------------
class Port(EventEmitter):
    """Message delivery over an Endpoint: pull (receive/iterate) or push (listeners)."""

    _push_events = ("message", "messageerror", "close")

    def __init__(self, endpoint):
        super().__init__()
        self._endpoint = endpoint
        self._queue = collections.deque()     # ("message", obj) | ("raise", exc)
        self._cond = threading.Condition()
        self._reader = None
        self._ended = False                   # EOF seen and handled
        self._closed = False

    # -- sending ---------------------------------------------------------------------
    def post_message(self, message, transfer=()):
        """Send a copy of message (SharedBuffers, typed arrays, sockets by fd; objects
        in transfer moved). Dropped silently once either side has closed."""
        if not transfer:
            # The common case, kept short: a small message costs a pickle (none for
            # bytes, which arrive as an equal bytes object anyway) and a ring write.
            kind = BYTES if type(message) is bytes else DATA
            try:
                payload = message if kind == BYTES else _dumps(message, 5)
            except (TypeError, AttributeError, pickle.PicklingError, NeedsFds):
                pass
            else:
                if not self._closed:
                    try:
                        self._endpoint.send(kind, payload)
                    except ChannelClosed:
                        pass
                return
        payload, fds, after_send = encode(message, transfer)
        if self._closed:
            return
        try:
            self._endpoint.send(DATA, payload, fds)
        except ChannelClosed:
            pass
        finally:
            for cleanup in after_send:
                cleanup()

    postMessage = post_message

    @property
    def endpoint(self):
        """The transport under this port (ipc.ring.Endpoint): the pool speaks its own
        records on it."""
        return self._endpoint

    def serve_listeners(self):
        """Block while a reader thread serves 'message' listeners (Node's keep-alive)."""
        if self.listener_count("message") and self._reader is not None:
            self._reader.join()

    # -- events ------------------------------------------------------------------------
    def on(self, event, callback):
        super().on(event, callback)
        self._start_reader(event)
        return self

    def once(self, event, callback):
        super().once(event, callback)
        self._start_reader(event)
        return self

    def _start_reader(self, event):
        # Listeners added after their events arrived still get them, in order: queued
        # messages/errors go to the new listener, and 'exit' after the end fires at once.
        if event == "online":
            self._endpoint.want_quiet_records()   # before the reader first looks
        with self._cond:
            if event in ("message", "error", "messageerror"):
                what = {"message": "message"}.get(event, "raise")
                kept = collections.deque()
                for item in self._queue:
                    if item[0] == what and (event != "error" or isinstance(item[1], WorkerError)) \
                            and (event != "messageerror" or not isinstance(item[1], WorkerError)):
                        self.emit(event, item[1])
                    else:
                        kept.append(item)
                self._queue.clear()
                self._queue.extend(kept)
            if event == "exit" and self._ended:
                self.emit("exit", self.exit_code)
        if event in self._push_events and self._reader is None and not self._ended:
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name=f"pyclusterc-{type(self).__name__}-reader")
            self._reader.start()

    def _read_loop(self):
        while not self._ended:
            self._pump(-1)

    def _pump(self, wait_ns, pulling=False):
        """Read and dispatch every event ready now; waits up to wait_ns for the first.
        A puller stops at once if another puller has queued messages meanwhile."""
        ep = self._endpoint
        with ep.read_lock:
            if self._ended or (pulling and self._queue):
                return
            try:
                batch = ep.receive_all()
                if not batch:
                    ep.wait(wait_ns)
                    batch = ep.receive_all()
            except (ChannelClosed, OSError):
                self._end()
                return
            if self._reader is None:
                self._queue_batch(batch)
            else:
                for m in batch:
                    self._dispatch(*m)

    def _queue_batch(self, batch):
        # Pull mode's loop, inlined for plain messages: the per-message cost is the point.
        queue, loads = self._queue, pickle.loads
        for kind, payload, fds in batch:
            if kind == DATA and not fds:
                try:
                    queue.append(("message", loads(payload)))
                    continue
                except Exception:  # noqa: BLE001  (_dispatch reports it as messageerror)
                    pass
            elif kind == BYTES:
                queue.append(("message", payload))
                continue
            self._dispatch(kind, payload, fds)

    def _dispatch(self, kind, payload, fds):
        if kind == BYTES:
            self._deliver("message", payload, ("message", payload))
        elif kind == DATA:
            try:
                message = decode(payload, fds)
            except Exception as e:  # noqa: BLE001  (reported as Node's messageerror)
                self._deliver("messageerror", e, ("raise", e))
                return
            self._deliver("message", message, ("message", message))

    def _deliver(self, event, arg, queued):
        if self._reader is None:
            # Pull mode: no listener and no reader thread, only this (read_lock holding)
            # thread touches the queue, so no condition variable per message.
            self._queue.append(queued)
            return
        with self._cond:
            if self.listener_count(event):
                self.emit(event, arg)
            else:
                self._queue.append(queued)
                self._cond.notify_all()

    def _end(self):
        self._ended = True
        with self._cond:
            self._cond.notify_all()
        self.emit("close")

    # -- pulling -----------------------------------------------------------------------
    def receive(self, timeout=None):
        """Next message; TimeoutError after timeout seconds, EOFError once the other
        side is gone and every message was read."""
        queue = self._queue
        if queue and self._reader is None:
            try:
                what, value = queue.popleft()    # fast path: a message read in an earlier batch
            except IndexError:
                pass                             # another puller took it
            else:
                if what == "raise":
                    raise value
                return value
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        looked = False
        while True:
            with self._cond:
                if self._queue:
                    what, value = self._queue.popleft()
                    if what == "raise":
                        raise value
                    return value
                if self._ended:
                    raise EOFError(self._eof_message())
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0 and (looked or self._reader is not None):
                    raise TimeoutError(f"no message within {timeout} s")
                if self._reader is not None:
                    self._cond.wait(left)
                    continue
            looked = True
            self._pump(-1 if left is None else max(0, int(left * 1e9)), pulling=True)

    def _eof_message(self):
        return "the port is closed"

    def __iter__(self):
        while True:
            try:
                yield self.receive()
            except EOFError:
                return

    async def receive_async(self, timeout=None):
        return await asyncio.get_running_loop().run_in_executor(None, self.receive, timeout)

    def _poll_message(self):
        """A message if one is queued or immediately readable, else raise TimeoutError."""
        return self.receive(0)


class MessagePort(Port):
    """One end of a MessageChannel (or a worker's parent_port)."""

    @classmethod
    def _adopt(cls, endpoint):
        return cls(endpoint)

    def close(self):
        """Close both ends: later messages are dropped; the other end gets 'close'."""
        if not self._closed:
            self._closed = True
            self._endpoint.shutdown()
            if self._reader is None:
                self._ended = True

    def _check_transferable(self):
        if self._closed or self._reader is not None:
            raise ValueError("a MessagePort can be transferred only while open and not "
                             "listened to (no on('message') yet)")

    def _detach(self):
        self._closed = self._ended = True
        self._endpoint.close()

    def __reduce__(self):
        raise NeedsFds()

    def __repr__(self):
        return f"<MessagePort {'closed' if self._closed else 'open'}>"


class MessageChannel:
    """Two entangled ports; either can be transferred to a worker."""

    def __init__(self):
        a, b = endpoint_pair()
        self.port1, self.port2 = MessagePort(a), MessagePort(b)


def receive_message_on_port(port):
    """Node's receiveMessageOnPort: ``{"message": m}`` if one is ready now, else None."""
    if not isinstance(port, Port):
        raise TypeError(f"receive_message_on_port needs a MessagePort, not {type(port).__name__}")
    try:
        return {"message": port._poll_message()}
    except (TimeoutError, EOFError):
        return None

