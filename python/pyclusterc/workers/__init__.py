"""Workers for parallel compute, after ``node:worker_threads``.

Parent side: ``Worker(target, ...)``. Events reach you in one of two ways, never both
for the same message:

* pull — ``worker.receive(timeout)``, ``for msg in worker``, ``await worker.receive_async()``
  read messages in order in the calling thread; an uncaught exception in the worker is
  raised (as ``WorkerError``) where it falls in the stream, and the stream ends at exit.
* push — ``worker.on("message" | "online" | "error" | "exit" | "messageerror", cb)`` starts
  one reader thread for that worker which calls listeners in Node's order
  (``online`` → messages → ``error`` → ``exit``). Messages that arrive while no
  ``message`` listener is registered are queued for the pull API instead.

Every message the worker sent before it ended is delivered before ``exit``.

Worker side: ``from pyclusterc.workers import parent_port, worker_data, thread_id,
is_main_thread`` (per worker even with the thread backend: they are looked up when
imported). A worker whose ``parent_port`` has a ``message`` listener when its target
returns stays alive until the port is closed (Node's keep-alive), serving the listener.
"""
import asyncio
import collections
import ctypes
import itertools
import os
import pickle
import resource
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
import weakref

from ..ipc import ring as _ring, channel
from .._lowlevel.native import lib, timeout_ns
from ..ipc.ring import BYTES, DATA, ERROR, ONLINE, ChannelClosed, Endpoint, endpoint_pair
from .._lowlevel.events import EventEmitter
from ..shared.buffer import SharedBuffer

__all__ = [
    "Worker", "WorkerError", "MessagePort", "MessageChannel", "BroadcastChannel",
    "receive_message_on_port", "parent_port", "worker_data", "is_main_thread", "thread_id",
]

_EXIT_UNCAUGHT = 1
_EXIT_TERMINATED = 1
_ids = itertools.count(1)


class WorkerError(Exception):
    """An exception the worker did not catch. ``remote_traceback`` is its formatted
    traceback; ``__cause__`` is the original exception when it could be pickled."""

    def __init__(self, message, remote_traceback="", exc_type=""):
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.exc_type = exc_type

    def __str__(self):
        return f"{self.args[0]}\n\nRemote traceback:\n{self.remote_traceback}"

    def __reduce__(self):
        return WorkerError, (self.args[0], self.remote_traceback, self.exc_type)


def _error_payload(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        original = pickle.dumps(exc)
    except Exception:  # noqa: BLE001  (many exceptions do not pickle; the text suffices)
        original = None
    return pickle.dumps((f"{type(exc).__name__}: {exc}", tb, type(exc).__qualname__, original))


def _error_from_payload(payload):
    message, tb, exc_type, original = pickle.loads(payload)
    err = WorkerError(message, tb, exc_type)
    if original is not None:
        try:
            err.__cause__ = pickle.loads(original)
        except Exception:  # noqa: BLE001
            pass
    return err


# ---- pickling: ports and transfers travel by fd -------------------------------------
class _NeedsFds(Exception):
    """Raised by objects that only a fd-passing pickler can carry."""


class _Pickler(channel._Pickler):
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


class _Unpickler(channel._Unpickler):
    def persistent_load(self, pid):
        tag = pid[0]
        if tag == "port":
            sock_fd, in_fd, out_fd = (self.fds[i] for i in pid[1])
            self.used.update(pid[1])
            return MessagePort._adopt(Endpoint(sock_fd, SharedBuffer._from_fd(in_fd),
                                               SharedBuffer._from_fd(out_fd)))
        if tag == "buffer":
            (i,) = pid[1]
            self.used.add(i)
            buf = SharedBuffer._from_fd(self.fds[i])
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
        except (TypeError, AttributeError, pickle.PicklingError, _NeedsFds):
            pass   # SharedBuffers, sockets and ports refuse plain pickle: pass their fds
    entries, after_send = _prepare_transfers(transfer)
    payload, fds = channel.dumps(obj, lambda f, fds: _Pickler(f, fds, entries))
    return payload, fds, after_send


_dumps = pickle.dumps


def decode(payload, fds):
    if not fds:
        return pickle.loads(payload)
    return channel.loads(payload, list(fds), _Unpickler)


# ---- ports ----------------------------------------------------------------------------
class _Port(EventEmitter):
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
            except (TypeError, AttributeError, pickle.PicklingError, _NeedsFds):
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


class MessagePort(_Port):
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
        raise _NeedsFds()

    def __repr__(self):
        return f"<MessagePort {'closed' if self._closed else 'open'}>"


class MessageChannel:
    """Two entangled ports; either can be transferred to a worker."""

    def __init__(self):
        a, b = endpoint_pair()
        self.port1, self.port2 = MessagePort(a), MessagePort(b)


def receive_message_on_port(port):
    """Node's receiveMessageOnPort: ``{"message": m}`` if one is ready now, else None."""
    if not isinstance(port, _Port):
        raise TypeError(f"receive_message_on_port needs a MessagePort, not {type(port).__name__}")
    try:
        return {"message": port._poll_message()}
    except (TimeoutError, EOFError):
        return None


# ---- worker-side context ---------------------------------------------------------------
class _Context:
    def __init__(self, port, data, tid):
        self.parent_port, self.worker_data, self.thread_id = port, data, tid
        self.is_main_thread = False


_MAIN = _Context(None, None, 0)
_MAIN.is_main_thread = True
_process_context = _MAIN          # replaced in a forked worker
_thread_context = threading.local()


def _context():
    return getattr(_thread_context, "ctx", None) or _process_context


def __getattr__(name):
    if name in ("parent_port", "worker_data", "thread_id", "is_main_thread"):
        return getattr(_context(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve_target(target, args):
    """A callable to run in the worker for target (callable, .py path or module:function)."""
    if callable(target):
        return lambda: target(*args)
    if target.endswith(".py"):
        def run_script():
            sys.argv = [target, *map(str, args)]
            runpy.run_path(target, run_name="__main__")
        return run_script
    module, _, attr = target.partition(":")
    import importlib
    fn = importlib.import_module(module)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return lambda: fn(*args)


def _check_target(target):
    if callable(target):
        return
    if not isinstance(target, str):
        raise TypeError(f"Worker target must be a callable, a .py path or 'module:function', "
                        f"not {type(target).__name__}")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FileNotFoundError(f"Worker target {target!r}: no such file")
    elif ":" not in target or not all(target.partition(":")[::2]):
        raise ValueError(f"Worker target {target!r}: use a callable, a path ending in .py, "
                         f"or 'module:function'")


def _run_worker(endpoint, target, args, data, tid):
    """The worker's body (both backends): online, target, keep-alive; returns exit code."""
    port = MessagePort(endpoint)
    ctx = _Context(port, data, tid)
    code = 0
    try:
        endpoint.send(ONLINE, b"")
        if threading.current_thread() is threading.main_thread():
            global _process_context
            _process_context = ctx
        _thread_context.ctx = ctx
        _resolve_target(target, args)()
        if port.listener_count("message") and port._reader is not None:
            port._reader.join()     # Node keeps a worker alive while its port is listened to
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Terminated:
        code = _EXIT_TERMINATED
    except BaseException as e:  # noqa: BLE001  (reported to the parent as 'error')
        code = _EXIT_UNCAUGHT
        try:
            endpoint.send(ERROR, _error_payload(e))
        except (ChannelClosed, OSError):
            pass
    return code


class _Terminated(BaseException):
    """Raised inside a thread-backend worker by terminate()."""


# ---- Worker --------------------------------------------------------------------------------
_live_parent_endpoints = weakref.WeakSet()   # closed in forked children: not theirs


def _usable_parent_endpoint(ep):
    _live_parent_endpoints.add(ep)
    return ep


class Worker(_Port):
    """A worker process (default, forked) or thread running target."""

    _push_events = ("message", "messageerror", "online", "error", "exit")

    def __init__(self, target, *, args=(), worker_data=None, env=None, name=None,
                 backend="process", start_method=None, resource_limits=None, transfer=()):
        _check_target(target)
        if backend not in ("process", "thread"):
            raise ValueError(f"Worker backend must be 'process' or 'thread', not {backend!r}")
        if start_method not in (None, "fork", "forkserver", "spawn"):
            raise ValueError(f"Worker start_method must be 'fork' (the default), 'forkserver' "
                             f"or 'spawn', not {start_method!r}")
        if backend == "thread" and start_method is not None:
            raise ValueError("start_method needs backend='process' (a thread is not started)")
        fresh = start_method in ("forkserver", "spawn")   # a new interpreter: import the target
        if fresh:
            _check_importable(target, start_method)
        if backend == "thread" and (env is not None or resource_limits):
            raise ValueError("env and resource_limits need backend='process' "
                             "(threads share the process's environment and limits)")
        limits = dict(resource_limits or {})
        unknown = set(limits) - {"max_memory_mb"}
        if unknown:
            raise ValueError(f"unknown resource_limits {sorted(unknown)}: accepted is max_memory_mb")
        self.thread_id = next(_ids)
        self.name = name or f"worker-{self.thread_id}"
        self.backend = backend
        self.start_method = (start_method or "fork") if backend == "process" else None
        self.pid = None
        self._status_fd = None       # forkserver: the server writes the wait status here
        self.exit_code = None
        self.signal = None           # the signal's name when a process died of one
        self._terminated = False
        self._reported_code = None
        self._error = None
        self._exit_event = threading.Event()
        parent_ep, child_ep = endpoint_pair()
        super().__init__(_usable_parent_endpoint(parent_ep))
        if fresh:
            # What a fork would inherit, sent first; the target second, once sys.path
            # and __main__ are set up for unpickling it.
            _send_plain(parent_ep, (self.thread_id, env, limits, sys.path, _main_path(target)))
            _send_plain(parent_ep, (target, args))
        # worker_data travels through the channel like a message, so SharedBuffers in it
        # arrive by fd; a process backend could inherit it, but one path is simpler.
        payload, fds, after_send = encode(worker_data, transfer)
        parent_ep.send(DATA, payload, fds)
        for cleanup in after_send:
            cleanup()
        if start_method == "spawn":
            self._start_spawn(child_ep)
        elif start_method == "forkserver":
            self._start_forkserver(child_ep)
        elif backend == "process":
            self._start_process(child_ep, target, args, env, limits)
        else:
            self._start_thread(child_ep, target, args)

    # -- starting -------------------------------------------------------------------------
    def _start_process(self, child_ep, target, args, env, limits):
        parent_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = _EXIT_UNCAUGHT
            try:
                lib.pc_die_with_parent(signal.SIGKILL, parent_pid)
                for ep in list(_live_parent_endpoints):
                    ep.close()
                _apply_env_and_limits(env, limits)
                code = _run_worker(child_ep, target, args, _read_worker_data(child_ep), self.thread_id)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.pid = pid
        child_ep.close()

    def _start_spawn(self, child_ep):
        # posix_spawn's dup2(fd, fd) clears close-on-exec in the child only, so no other
        # process started meanwhile inherits these fds.
        fds = child_ep.fds_for_transfer()
        argv = [sys.executable, "-c", "from pyclusterc.workers import _spawned_main; _spawned_main()",
                *map(str, fds), str(os.getpid())]
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.posix_spawn(sys.executable, argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, fd, fd) for fd in fds])
        child_ep.close()

    def _start_forkserver(self, child_ep):
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = _forkserver_request(child_ep.fds_for_transfer() + [status_w])
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self._status_fd = status_r
        child_ep.close()

    def _wait_status(self):
        """The worker process's wait status (as os.waitpid gives it), once it ended."""
        if self._status_fd is None:
            return os.waitpid(self.pid, 0)[1]
        try:
            data = b""
            while len(data) < 4:
                chunk = os.read(self._status_fd, 4 - len(data))
                if not chunk:     # the server died before reaping it: report a kill
                    return signal.SIGKILL
                data += chunk
            return int.from_bytes(data, "little", signed=True)
        finally:
            os.close(self._status_fd)

    def _start_thread(self, child_ep, target, args):
        def body():
            code = _EXIT_UNCAUGHT
            try:
                code = _run_worker(child_ep, target, args, _read_worker_data(child_ep), self.thread_id)
            except _Terminated:
                code = _EXIT_TERMINATED
            finally:
                # terminate() may have just raised _Terminated in this thread: stop it from
                # raising more, drop one still pending, and absorb one that lands here, so
                # the cleanup below always runs (one already in flight ends in run()).
                while True:
                    try:
                        with self._terminate_lock:
                            self._terminable = False
                            _raise_in_thread(threading.current_thread(), None)
                        break
                    except _Terminated:
                        code = _EXIT_TERMINATED
                self._reported_code = code
                child_ep.shutdown()
                child_ep.close()

        def run():
            try:
                body()
            except _Terminated:  # raised before the cleanup stopped them; nothing left to do
                pass
        self._terminate_lock = threading.Lock()
        self._terminable = True
        parent_ep = self._endpoint
        parent_ep.spin_ns = child_ep.spin_ns = 0
        self._thread = threading.Thread(target=run, daemon=True, name=self.name)
        self._thread.start()
        self._child_ep = child_ep

    # -- events -----------------------------------------------------------------------------
    def _dispatch(self, kind, payload, fds):
        if kind == ONLINE:
            self.emit("online")
        elif kind == ERROR:
            err = _error_from_payload(payload)
            self._error = err
            self._deliver("error", err, ("raise", err))
        else:
            super()._dispatch(kind, payload, fds)

    def _end(self):
        if self.backend == "process":
            status = self._wait_status()
            if os.WIFSIGNALED(status):
                signum = os.WTERMSIG(status)
                self.signal = signal.Signals(signum).name
                code = 128 + signum
            else:
                code = os.WEXITSTATUS(status)
        else:
            if not self._terminated:
                self._thread.join()   # the hang-up can come early, from parent_port.close()
            code = self._reported_code if self._reported_code is not None else _EXIT_UNCAUGHT
        self.exit_code = _EXIT_TERMINATED if self._terminated else code
        # Not endpoint.close(): another thread (a pool's manager) may be polling it;
        # the fd and the rings go when the last user drops the endpoint.
        self._endpoint.closed = True
        with self._cond:
            self._ended = True
            self._cond.notify_all()
            self._exit_event.set()
            self.emit("exit", self.exit_code)

    def _eof_message(self):
        how = f"killed by {self.signal}" if self.signal and not self._terminated else f"exited with code {self.exit_code}"
        return f"worker {self.name} {how}"

    # -- control ------------------------------------------------------------------------------
    def join(self, timeout=None):
        """Wait for the worker to end (messages not yet read stay queued); returns
        exit_code, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._reader is not None:
                self._exit_event.wait(left)
            else:
                self._drain_into_queue(-1 if left is None else int(left * 1e9))
        return self.exit_code

    def _drain_into_queue(self, wait_ns):
        # Read ahead without listeners: messages queue for receive() in order.
        self._pump(wait_ns)

    def terminate(self):
        """Stop the worker as soon as possible; returns its exit code (1, as Node)."""
        if not self._ended:
            self._terminated = True
            if self.backend == "process":
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                self._keep_terminating()
                self._child_ep.shutdown()
        return self.join()

    def _keep_terminating(self):
        """Raise _Terminated in the thread, and again every 50 ms (from a helper thread)
        until its body's cleanup has begun: one that lands in a __del__ is lost."""
        def raise_once():
            with self._terminate_lock:
                if self._terminable:
                    _raise_in_thread(self._thread, _Terminated)
                return self._terminable

        def keep_raising():
            while raise_once():
                time.sleep(0.05)
        if raise_once():
            threading.Thread(target=keep_raising, daemon=True, name=f"{self.name}-terminate").start()

    def post_message(self, message, transfer=()):
        if not self._ended:
            super().post_message(message, transfer)

    postMessage = post_message

    @property
    def error(self):
        """The worker's uncaught exception (WorkerError), once it has been read."""
        return self._error

    def __repr__(self):
        state = f"exit_code={self.exit_code}" if self._ended else "running"
        return f"<Worker {self.name} {self.backend} pid={self.pid} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()


def _read_worker_data(ep):
    while True:
        m = ep.receive()
        if m is not None:
            return decode(m[1], m[2])
        ep.wait(-1)


def _apply_env_and_limits(env, limits):
    if env is not None:
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    if limits.get("max_memory_mb"):
        cap = int(limits["max_memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


# ---- spawn and forkserver ---------------------------------------------------------------------
def _check_importable(target, start_method):
    if not callable(target):
        return     # a .py path or 'module:function' is resolved in the worker
    how = (f"Worker target {getattr(target, '__qualname__', target)!r} cannot start with "
           f"start_method={start_method!r}: it must be importable (a top-level function, "
           f"'module:function' or a .py path)")
    try:
        pickle.dumps(target)
    except Exception:  # noqa: BLE001  (lambdas, nested functions, bound local objects)
        raise ValueError(how) from None
    if getattr(target, "__module__", None) == "__main__" and _main_path(target) is None:
        raise ValueError(how + "; __main__ has no file to import it from")


def _main_path(target):
    """The script to import as __main__ in a fresh interpreter when target lives there."""
    if getattr(target, "__module__", None) != "__main__":
        return None
    path = getattr(sys.modules["__main__"], "__file__", None)
    return os.path.abspath(path) if path else None


def _send_plain(ep, obj):
    payload, fds, _ = encode(obj)
    ep.send(DATA, payload, fds)


def _spawned_main():
    """Entry point of a spawned worker: python -c ... SOCK_FD IN_FD OUT_FD PARENT_PID."""
    sock_fd, in_fd, out_fd, parent_pid = map(int, sys.argv[1:5])
    sys.argv = sys.argv[:1]
    _boot(sock_fd, in_fd, out_fd, parent_pid)


def _boot(sock_fd, in_fd, out_fd, parent_pid):
    """A fresh worker process (spawn or forkserver): read the spec, run the target, exit."""
    code = _EXIT_UNCAUGHT
    try:
        lib.pc_die_with_parent(signal.SIGKILL, parent_pid)
        ep = Endpoint(sock_fd, SharedBuffer._from_fd(in_fd), SharedBuffer._from_fd(out_fd))
        tid, env, limits, path, main_path = _read_worker_data(ep)
        sys.path[:] = path
        _apply_env_and_limits(env, limits)
        if main_path:
            # As multiprocessing does: the parent's script runs as __mp_main__ (its
            # `if __name__ == "__main__"` block stays off) and stands in for __main__.
            module = type(sys)("__mp_main__")
            sys.modules["__main__"] = sys.modules["__mp_main__"] = module
            module.__dict__.update(runpy.run_path(main_path, run_name="__mp_main__"))
        try:
            target, args = _read_worker_data(ep)
        except Exception as e:  # noqa: BLE001  (it could not be imported here: say so as 'error')
            target, args = _raiser(e), ()
        code = _run_worker(ep, target, args, _read_worker_data(ep), tid)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _raiser(exc):
    def fail():
        raise exc
    return fail


class _ForkServer:
    """The forkserver of this process: a fresh interpreter with pyclusterc imported,
    forking one child per request. A request carries the worker's channel and ring fds
    and a pipe; the server replies with the pid and writes the wait status to the pipe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-c", "from pyclusterc.workers import _forkserver_main; _forkserver_main()",
                str(theirs.fileno()), str(os.getpid())]
        self.pid = os.posix_spawn(sys.executable, argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), theirs.fileno())])
        theirs.close()
        self._reap = weakref.finalize(self, _reap_server, self.sock, self.pid)

    def request(self, fds):
        with self.lock:
            socket.send_fds(self.sock, [b"w"], fds)
            data = b""
            while len(data) < 8:
                chunk = self.sock.recv(8 - len(data))
                if not chunk:
                    raise ChannelClosed("the forkserver is gone")
                data += chunk
            return int.from_bytes(data, "little", signed=True)


def _reap_server(sock, pid):
    sock.close()          # the server exits at EOF
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


_forkserver = None
_forkserver_lock = threading.Lock()


def _forget_forkserver():
    # In a forked child the parent's server socket is not ours: keeping it open would
    # also keep the server alive after the parent ends.
    global _forkserver
    if _forkserver is not None:
        _forkserver._reap.detach()
        _forkserver.sock.close()
        _forkserver = None


os.register_at_fork(after_in_child=_forget_forkserver)


def _forkserver_request(fds):
    global _forkserver
    for attempt in (1, 2):
        with _forkserver_lock:
            if _forkserver is None:
                _forkserver = _ForkServer()
            server = _forkserver
        try:
            pid = server.request(fds)
        except (ChannelClosed, OSError):
            with _forkserver_lock:
                if _forkserver is server:
                    _forkserver = None         # it died: start another once
            if attempt == 2:
                raise
            continue
        if pid < 0:
            raise OSError(-pid, f"the forkserver could not fork: {os.strerror(-pid)}")
        return pid


def _forkserver_main():
    """The forkserver's loop (see _ForkServer)."""
    import select
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    lib.pc_die_with_parent(signal.SIGKILL, int(sys.argv[2]))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_fds = {}       # child pid -> the pipe its wait status goes to
    poller = select.poll()
    poller.register(ctrl, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if wake_r in events:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        while status_fds:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            fd = status_fds.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, status.to_bytes(4, "little", signed=True))
                except OSError:
                    pass
                os.close(fd)
        if ctrl.fileno() in events:
            msg, fds, _, _ = socket.recv_fds(ctrl, 16, 4)
            if not msg:
                os._exit(0)      # the parent is gone (its workers die with this process)
            try:
                pid = os.fork()
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                ctrl.sendall((-e.errno).to_bytes(8, "little", signed=True))
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (ctrl.fileno(), wake_r, wake_w, fds[3], *status_fds.values()):
                    os.close(fd)
                _boot(fds[0], fds[1], fds[2], os.getppid())
            for fd in fds[:3]:
                os.close(fd)
            status_fds[pid] = fds[3]
            ctrl.sendall(pid.to_bytes(8, "little", signed=True))


def _raise_in_thread(thread, exc_type):
    # Runs when the thread next executes Python bytecode; code inside a C call
    # (time.sleep, a numpy op) finishes that call first. None clears a pending one.
    exc = None if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), exc)


# ---- BroadcastChannel -------------------------------------------------------------------------
class BroadcastChannel(EventEmitter):
    """Messages to every other BroadcastChannel of the same name on this host (any
    process). One datagram socket per instance in the abstract namespace; a message
    is pickled once and sent to each member (found in /proc/net/unix). Plain pickle:
    no SharedBuffers or transfers; at most about 200 KiB a message."""

    _counter = itertools.count()

    def __init__(self, name):
        super().__init__()
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"BroadcastChannel name must be a non-empty str without '/', got {name!r}")
        self.name = name
        self._prefix = f"pyclusterc-bc/{name}/"
        self._addr = f"\0{self._prefix}{os.getpid()}.{next(self._counter)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._addr)
        self._reader = None
        self._closed = False

    def _members(self):
        with open("/proc/net/unix") as f:
            for line in f:
                path = line.rstrip("\n").split(" ")[-1]
                if path.startswith("@" + self._prefix) and path[1:] != self._addr[1:]:
                    yield "\0" + path[1:]

    def post_message(self, message):
        if self._closed:
            raise ValueError("BroadcastChannel is closed")
        data = pickle.dumps(message, 5)
        for addr in set(self._members()):
            try:
                self._sock.sendto(data, addr)
            except (ConnectionRefusedError, FileNotFoundError):
                pass      # a member that closed between the listing and now

    postMessage = post_message

    def receive(self, timeout=None):
        self._sock.settimeout(timeout)
        try:
            return pickle.loads(self._sock.recv(1 << 20))
        except socket.timeout:
            raise TimeoutError(f"no message within {timeout} s") from None

    def on(self, event, callback):
        super().on(event, callback)
        if event == "message" and self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()
        return self

    def _read_loop(self):
        while not self._closed:
            try:
                data = self._sock.recv(1 << 20)
            except OSError:
                return
            if not data and self._closed:
                return
            try:
                self.emit("message", pickle.loads(data))
            except Exception as e:  # noqa: BLE001
                self.emit("messageerror", e)

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()


from .pool import WorkerDied, WorkerPool  # noqa: E402,F401  (pool builds on Worker above)
