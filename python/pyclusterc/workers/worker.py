"""``Worker``: a forked process (default) or a thread running a target, and the parent's
side of its link.

    parent                                        worker (process or thread)
    Worker(target, worker_data, transfer)
      endpoint_pair() ------ rings + channel ------ child endpoint
      worker_data as the first DATA message  --->  runtime.read_worker_data()
      fork / start.spawn / start.forkserver        runtime.run_worker(): ONLINE, target(),
                                                     messages, ERROR for an uncaught one
      receive()/on(...) <--- records in order ----  EOF when it ends
      _end(): reap, exit_code, 'exit'

Every message the worker sent before it ended is delivered before ``exit``.
"""
import itertools
import os
import signal
import sys
import threading
import time
import weakref

from .._lowlevel.native import lib
from .._lowlevel.process import decode_wait_status, run_child
from ..ipc.ring import DATA, ERROR, ONLINE, endpoint_pair
from . import start
from .errors import error_from_payload
from .ports import MessagePort, Port, encode
from .runtime import (EXIT_TERMINATED, EXIT_UNCAUGHT, Terminated, apply_env_and_limits,
                      check_target, raise_in_thread, read_worker_data, run_worker)

__all__ = ["Worker"]

_ids = itertools.count(1)
_live_parent_endpoints = weakref.WeakSet()   # closed in forked children: not theirs


class _SparePairs:
    """One endpoint pair made ahead of time (2 ring regions and a socketpair cost a few
    hundred microseconds): made while a forked child boots, taken by the next Worker."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pair = None

    def take(self):
        with self.lock:
            pair, self.pair = self.pair, None
        return pair or endpoint_pair()

    def refill(self):
        with self.lock:
            if self.pair is not None:
                return
        pair = endpoint_pair()
        with self.lock:
            if self.pair is None:
                self.pair, pair = pair, None
        if pair is not None:
            for ep in pair:
                ep.close()

    def pop_all(self):
        """In a forked child: the parent's spare, to abandon."""
        pair, self.pair = self.pair, None
        self.lock = threading.Lock()     # it may have been held by another thread at fork
        return list(pair or ())


_spare_pairs = _SparePairs()
_take_endpoint_pair = _spare_pairs.take


def _usable_parent_endpoint(ep):
    _live_parent_endpoints.add(ep)
    return ep


def _quiet_lost_terminations():
    """A Terminated that lands in a __del__ or a weakref finalizer is lost there and
    raised again (Worker._keep_terminating): expected, so not printed as an "Exception
    ignored". Wraps whatever sys.unraisablehook is now (it may have been replaced since
    the last call: pytest swaps it per test); every other report goes to it unchanged."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_terminated", False):
        return

    def hook(unraisable):
        if unraisable.exc_type is not Terminated:
            previous(unraisable)
    hook.drops_terminated = True
    sys.unraisablehook = hook


class Worker(Port):
    """A worker process (default, forked) or thread running target."""

    _push_events = ("message", "messageerror", "online", "error", "exit")

    def __init__(self, target, *, args=(), worker_data=None, env=None, name=None,
                 backend="process", start_method=None, resource_limits=None, transfer=()):
        check_target(target)
        if backend not in ("process", "thread"):
            raise ValueError(f"Worker backend must be 'process' or 'thread', not {backend!r}")
        if start_method not in (None, "fork", "forkserver", "spawn"):
            raise ValueError(f"Worker start_method must be 'fork' (the default), 'forkserver' "
                             f"or 'spawn', not {start_method!r}")
        if backend == "thread" and start_method is not None:
            raise ValueError("start_method needs backend='process' (a thread is not started)")
        fresh = start_method in ("forkserver", "spawn")   # a new interpreter: import the target
        if fresh:
            start.check_importable(target, start_method)
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
        parent_ep, child_ep = _take_endpoint_pair()
        super().__init__(_usable_parent_endpoint(parent_ep))
        if fresh:
            # What a fork would inherit, sent first; the target second, once sys.path
            # and __main__ are set up for unpickling it.
            start.send_plain(parent_ep, (self.thread_id, env, limits, sys.path, start.main_path(target)))
            start.send_plain(parent_ep, (target, args))
        # worker_data travels through the channel like a message, so SharedBuffers in it
        # arrive by fd. None (the usual case) needs no message for a forked child.
        inherit_none = worker_data is None and not transfer and self.start_method == "fork"
        if not inherit_none:
            payload, fds, after_send = encode(worker_data, transfer)
            parent_ep.send(DATA, payload, fds)
            for cleanup in after_send:
                cleanup()
        if start_method == "spawn":
            self._start_spawn(child_ep)
        elif start_method == "forkserver":
            self._start_forkserver(child_ep)
        elif backend == "process":
            self._start_process(child_ep, target, args, env, limits, inherit_none)
        else:
            self._start_thread(child_ep, target, args)

    # -- starting -------------------------------------------------------------------------
    def _start_process(self, child_ep, target, args, env, limits, inherit_none):
        parent_pid = os.getpid()

        def body():
            lib.pc_die_with_parent(signal.SIGKILL, parent_pid)
            for ep in list(_live_parent_endpoints) + _spare_pairs.pop_all():
                ep.abandon()
            apply_env_and_limits(env, limits)
            data = None if inherit_none else read_worker_data(child_ep)
            return run_worker(child_ep, target, args, data, self.thread_id, child_port)
        # Made here, the child's port costs it no allocation (a forked child pays for
        # every page it first writes).
        child_port = MessagePort(child_ep)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(body, EXIT_UNCAUGHT)
        self.pid = pid
        child_ep.close()
        _spare_pairs.refill()      # while the child boots: the next Worker starts sooner

    def _start_spawn(self, child_ep):
        # posix_spawn's dup2(fd, fd) clears close-on-exec in the child only, so no other
        # process started meanwhile inherits these fds.
        self.pid = start.spawn(child_ep.fds_for_transfer())
        child_ep.close()

    def _start_forkserver(self, child_ep):
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = start.forkserver_request(child_ep.fds_for_transfer() + [status_w])
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
            code = EXIT_UNCAUGHT
            try:
                code = run_worker(child_ep, target, args, read_worker_data(child_ep), self.thread_id)
            except Terminated:
                code = EXIT_TERMINATED
            finally:
                # terminate() may have just raised Terminated in this thread: stop it from
                # raising more, drop one still pending, and absorb one that lands here, so
                # the cleanup below always runs (one already in flight ends in run()).
                while True:
                    try:
                        with self._terminate_lock:
                            self._terminable = False
                            raise_in_thread(threading.current_thread(), None)
                        break
                    except Terminated:
                        code = EXIT_TERMINATED
                self._reported_code = code
                child_ep.shutdown()
                child_ep.close()

        def run():
            try:
                body()
            except Terminated:  # raised before the cleanup stopped them; nothing left to do
                pass
        self._terminate_lock = threading.Lock()
        self._terminable = True
        parent_ep = self._endpoint
        parent_ep.spin_limit_ns = child_ep.spin_limit_ns = parent_ep.spin_ns = child_ep.spin_ns = 0
        self._thread = threading.Thread(target=run, daemon=True, name=self.name)
        self._thread.start()
        self._child_ep = child_ep

    # -- events -----------------------------------------------------------------------------
    def _dispatch(self, kind, payload, fds):
        if kind == ONLINE:
            self.emit("online")
        elif kind == ERROR:
            err, _ = error_from_payload(payload)
            self._error = err
            self._deliver("error", err, ("raise", err))
        else:
            super()._dispatch(kind, payload, fds)

    def _end(self):
        if self.backend == "process":
            status = self._wait_status()
            code, self.signal = decode_wait_status(status)
            if self.signal is not None:     # as a shell reports it: 128 + the signal number
                code = 128 - os.waitstatus_to_exitcode(status)
        else:
            if not self._terminated:
                self._thread.join()   # the hang-up can come early, from parent_port.close()
            code = self._reported_code if self._reported_code is not None else EXIT_UNCAUGHT
        self.exit_code = EXIT_TERMINATED if self._terminated else code
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
        """Raise Terminated in the thread, and again every 50 ms (from a helper thread)
        until its body's cleanup has begun: one that lands in a __del__ is lost."""
        def raise_once():
            with self._terminate_lock:
                if self._terminable:
                    raise_in_thread(self._thread, Terminated)
                return self._terminable

        def keep_raising():
            while raise_once():
                time.sleep(0.05)
        _quiet_lost_terminations()
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
