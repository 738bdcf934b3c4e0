"""WorkerPool: a ``concurrent.futures.Executor`` over pyclusterc Workers.

    caller threads                 manager thread (_Manager.run)          pool workers
    submit(fn, *args)                                                    (tasks.worker_loop)
      pickle now (errors go to       wait_any(worker endpoints, wakeup)
      the future); queue; send  ---- TASK records, up to DEPTH a worker -->  run, reply
      if a worker has room           collect RESULT / RAISED / UNDELIVERED  <--
    future.result()  <-------------- set each future (a record that does not unpickle
                                     fails only its own future)
                                     a worker's EOF: its running task fails (WorkerDied),
                                     tasks queued behind it go to others; it is replaced
    shutdown()/del/exit ------------ wakeup: finish the queued work, STOP, join workers

Unlike ProcessPoolExecutor, a worker that dies (a signal, os._exit, a segfault) fails
only the task it was running; it is replaced and the pool goes on. A failing
initializer breaks the pool (BrokenWorkerPool), as the stdlib's does. The manager holds
no reference to the WorkerPool, so dropping the last one shuts it down; at interpreter
exit every pool finishes its queued work first.
"""
import atexit
import collections
import concurrent.futures as cf
import functools
import itertools
import logging
import os
import pickle
import threading
import weakref

from .._lowlevel.cpus import usable_cpus
from .._lowlevel.wakeup import WakeupPipe
from ..ipc import ring
from ..ipc.ring import ERROR, ChannelClosed
from . import tasks
from .errors import (BrokenWorkerPool, RemoteTraceback, TaskTransferError, WorkerDied,
                     describe, rebuild_error)
from .ports import decode
from .worker import Worker

__all__ = ["WorkerPool", "WorkerDied", "BrokenWorkerPool", "TaskTransferError", "usable_cpus"]

DEPTH = 2                  # tasks sent ahead to a worker: one running, one ready behind it
_logger = logging.getLogger("concurrent.futures")
_live_managers = set()
_interpreter_exiting = False


def _python_exit():
    """At interpreter exit: every pool finishes its queued work, then stops."""
    global _interpreter_exiting
    _interpreter_exiting = True
    managers = list(_live_managers)
    for manager in managers:
        manager.begin_shutdown()
    for manager in managers:
        manager.thread.join()


# Registered at import, so it runs after the atexit hooks registered later (they may
# still use a pool) and before those registered earlier (they get RuntimeError), while
# the daemon manager threads still run.
atexit.register(_python_exit)
os.register_at_fork(after_in_child=_live_managers.clear)   # a child has no manager threads


class _Task:
    __slots__ = ("id", "future", "name", "record", "fds", "keep", "started")

    def __init__(self, task_id, future, name, record, fds, keep):
        self.id, self.future, self.name = task_id, future, name
        self.record, self.fds, self.keep = record, fds, keep
        self.started = False


def _task_name(fn):
    if isinstance(fn, tasks.ByValue):
        fn = fn.fn
    if isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


class WorkerPool(cf.Executor):
    """``concurrent.futures.Executor`` over ``max_workers`` pyclusterc Workers (default:
    the usable CPUs). ``initializer(*initargs)`` runs in each worker first; a worker is
    replaced after ``max_tasks_per_child`` tasks. ``backend="thread"`` runs workers as
    threads (for free-threaded Python or GIL-releasing work)."""

    def __init__(self, max_workers=None, initializer=None, initargs=(), max_tasks_per_child=None,
                 backend="process"):
        if max_workers is None:
            max_workers = usable_cpus()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None and (isinstance(max_tasks_per_child, bool) or
                                                not isinstance(max_tasks_per_child, int) or
                                                max_tasks_per_child < 1):
            raise ValueError(f"max_tasks_per_child must be an int >= 1 or None, got {max_tasks_per_child!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if backend not in ("process", "thread"):
            raise ValueError(f"WorkerPool backend must be 'process' or 'thread', not {backend!r}")
        self._max_workers = max_workers
        self._manager = _Manager(max_workers, (initializer, tuple(initargs), max_tasks_per_child),
                                 max_tasks_per_child, backend)
        # Dropping the pool shuts it down (without waiting), as the stdlib's executors do.
        weakref.finalize(self, self._manager.begin_shutdown).atexit = False

    # -- Executor API -------------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs):
        return self._manager.submit(fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1, **more):
        """Executor.map: results in order; ``chunksize`` tasks' worth of arguments travel
        together. Other keywords go to Executor.map as they are (``buffersize`` on 3.14)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        fn = tasks.ByValue.of(fn) or fn     # pickled once for all the tasks, not per task
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout, **more)
        chunks = super().map(functools.partial(tasks.run_chunk, fn), _chunks(iterables, chunksize),
                             timeout=timeout, **more)
        return _flatten(chunks)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._manager.begin_shutdown(cancel_futures)
        # A done-callback runs on the manager thread: it cannot wait for itself.
        if wait and threading.current_thread() is not self._manager.thread:
            self._manager.thread.join()

    @property
    def workers(self):
        """The live Worker objects (a snapshot)."""
        return self._manager.snapshot()

    @property
    def broken(self):
        """Why the pool cannot run tasks (a str), or False."""
        return self._manager.broken or False


def _chunks(iterables, chunksize):
    it = zip(*iterables)
    while chunk := tuple(itertools.islice(it, chunksize)):
        yield chunk


def _flatten(chunks):
    # Pop as we go: the iterator must not keep results alive (bpo-14406).
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


class _Manager:
    """The pool's state and its manager thread; knows nothing of the WorkerPool object."""

    def __init__(self, max_workers, worker_args, max_tasks, backend):
        self.worker_args, self.max_tasks, self.backend = worker_args, max_tasks, backend
        self.lock = threading.Lock()
        self.pending = collections.deque()     # _Task not sent yet (or sent to a dead worker)
        self.inflight = {}                     # Worker -> deque of _Task it holds, in order
        self.sent = {}                         # Worker -> tasks sent over its lifetime
        self.init_failed = set()               # Workers that said INIT_FAILED
        self.ids = itertools.count()
        self.names = itertools.count()
        self.shutting_down = False
        self.broken = None
        self.wakeup = WakeupPipe()
        with self.lock:
            try:
                for _ in range(max_workers):
                    self.spawn_locked()
            except BaseException:
                for worker in self.inflight:   # no manager yet to stop the ones started
                    worker.terminate()
                self.wakeup.close()
                raise
        self.thread = threading.Thread(target=self.run, daemon=True, name="pyclusterc-pool")
        _live_managers.add(self)
        self.thread.start()

    # -- called from user threads ----------------------------------------------------------
    def submit(self, fn, args, kwargs):
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        future = cf.Future()
        task_id = next(self.ids)
        try:
            record, fds = tasks.task_record(task_id, fn, args, kwargs)
        except BaseException as e:  # noqa: BLE001  (a task that cannot travel fails its future)
            record = None
            error = e
        with self.lock:
            if self.broken:
                raise BrokenWorkerPool(self.broken)
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if record is None:
                future.set_exception(error)
                return future
            # The arguments themselves are kept only while their fds must stay open.
            self.pending.append(_Task(task_id, future, _task_name(fn), record, fds,
                                      (fn, args, kwargs) if fds else None))
            self.dispatch_locked()
        return future

    def begin_shutdown(self, cancel_futures=False):
        with self.lock:
            self.shutting_down = True
            if cancel_futures:
                kept = collections.deque()
                for task in self.pending:
                    if task.started or not task.future.cancel():
                        kept.append(task)         # already running: it still finishes
                self.pending = kept
            self.wakeup.wake()     # under the lock: stop_workers closes it under the lock

    def snapshot(self):
        with self.lock:
            return tuple(self.inflight)

    # -- the manager thread ------------------------------------------------------------------
    def run(self):
        try:
            self.loop()
        except BaseException as e:  # noqa: BLE001  (never leave a future waiting forever)
            self.break_pool(f"the pool's manager thread failed: {describe(e)}")
        finally:
            self.stop_workers()
            _live_managers.discard(self)

    def loop(self):
        while True:
            with self.lock:
                if self.broken or (self.shutting_down and not self.pending
                                   and not any(self.inflight.values())):
                    return
                by_endpoint = {w.endpoint: w for w in self.inflight}
            ready = ring.wait_any(list(by_endpoint), -1, [self.wakeup.fileno()])
            self.wakeup.drain()
            for endpoint in ready:
                self.collect(by_endpoint[endpoint])
            with self.lock:
                self.dispatch_locked()

    def collect(self, worker):
        try:
            batch = worker.endpoint.receive_all()
        except (ChannelClosed, OSError):
            self.worker_ended(worker)
            return
        for kind, payload, fds in batch:
            try:
                self.handle(worker, kind, payload, fds)
            except BaseException as e:  # noqa: BLE001  (one bad record must not stop the pool)
                self.fail_next(worker, TaskTransferError(
                    f"a reply from worker {worker.name} could not be handled: {describe(e)}"))

    def handle(self, worker, kind, payload, fds):
        if kind == tasks.INIT_FAILED:
            summary, tb, *_ = rebuild_error(payload)
            _logger.critical("Exception in initializer:\n%s", tb)
            self.init_failed.add(worker)
            self.break_pool(f"A worker initializer failed, the pool is not usable anymore: {summary}")
            return
        if kind == ERROR:        # worker_loop itself raised: its tasks fail when it ends
            return
        if kind not in (tasks.RESULT, tasks.RAISED, tasks.UNDELIVERED):
            for fd in fds:
                os.close(fd)
            return
        task_id = tasks.HEADER.unpack_from(payload)[0]
        body = memoryview(payload)[tasks.HEADER.size:]
        with self.lock:
            queue = self.inflight.get(worker)
            task = queue.popleft() if queue else None
        if task is None or task.id != task_id:
            raise RuntimeError(f"worker {worker.name} replied for task {task_id}, "
                               f"not the one it was given")
        task.keep = task.record = task.fds = None
        self.settle(task, kind, body, fds, worker)

    def settle(self, task, kind, body, fds, worker):
        future = task.future
        if kind == tasks.RESULT:
            try:
                value = decode(body, fds)
            except BaseException as e:  # noqa: BLE001  (SystemExit from a __reduce__ too)
                error = TaskTransferError(f"the result of task {task.name} could not be "
                                          f"unpickled in the parent: {describe(e)}")
                error.__cause__ = e
                future.set_exception(error)
                return
            future.set_result(value)
        elif kind == tasks.RAISED:
            summary, tb, _, exc, why = rebuild_error(body)
            if exc is None:
                exc = TaskTransferError(f"task {task.name} raised {summary}, which could not "
                                        f"be rebuilt in the parent ({why})", tb)
            exc.__cause__ = RemoteTraceback(tb)
            future.set_exception(exc)
        else:
            summary, tb = pickle.loads(body)
            future.set_exception(TaskTransferError(
                f"task {task.name} could not be unpickled in worker {worker.name}: {summary}", tb))

    def fail_next(self, worker, error):
        with self.lock:
            queue = self.inflight.get(worker)
            task = queue.popleft() if queue else None
        if task is not None:
            task.future.set_exception(error)

    def worker_ended(self, worker):
        worker.join()
        with self.lock:
            queue = self.inflight.pop(worker, collections.deque())
            self.sent.pop(worker, None)
            running = queue.popleft() if queue else None
            self.pending.extendleft(reversed(queue))   # they never started: run them elsewhere
            # Shutting down, a replacement is needed only for tasks not yet on a worker
            # (this one's queue, just moved to pending); a task running elsewhere has its
            # worker.
            needed = not self.broken and (not self.shutting_down or self.pending)
            spawn_error = None
            if needed and worker not in self.init_failed:
                try:
                    self.spawn_locked()
                except Exception as e:  # noqa: BLE001  (fork can fail: EAGAIN, ENOMEM)
                    spawn_error = e
            self.init_failed.discard(worker)
        if running is not None:
            how = (f"was killed by {worker.signal}" if worker.signal
                   else f"terminated abruptly with exit code {worker.exit_code}")
            text = f"worker {worker.name} (pid {worker.pid}) {how} while running task {running.name}"
            error = WorkerDied(f"{text}; it was replaced")
            error.__cause__ = RemoteTraceback(text)
            running.future.set_exception(error)
        if spawn_error is not None and not self.inflight:
            self.break_pool(f"a worker could not be started: {describe(spawn_error)}")

    def break_pool(self, why):
        with self.lock:
            if self.broken is None:
                self.broken = why
            tasks_left = list(self.pending)
            self.pending.clear()
            for queue in self.inflight.values():
                tasks_left.extend(queue)
                queue.clear()
        for task in tasks_left:
            if not task.future.done():
                # One exception each: a shared one would grow a traceback per result().
                task.future.set_exception(BrokenWorkerPool(why))

    def spawn_locked(self):
        worker = Worker(tasks.worker_loop, args=self.worker_args, backend=self.backend,
                        name=f"pool-worker-{next(self.names)}")
        self.inflight[worker] = collections.deque()
        self.sent[worker] = 0

    def dispatch_locked(self):
        # Breadth first: every idle worker gets a task before any gets a second one.
        for depth in range(DEPTH):
            for worker, queue in self.inflight.items():
                if not self.pending:
                    return
                if len(queue) == depth and not (self.max_tasks and self.sent[worker] >= self.max_tasks):
                    self.send_next_locked(worker, queue)

    def send_next_locked(self, worker, queue):
        while self.pending:
            task = self.pending[0]
            if queue and len(task.record) > worker.endpoint.outbox.max_record:
                # A record this large streams over the socket: only a worker that is
                # waiting reads it at once, so the send cannot wait on a busy worker
                # that itself waits for us to read its result.
                return
            self.pending.popleft()
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    continue                      # cancelled while it waited
                task.started = True
            try:
                worker.endpoint.send(tasks.TASK, task.record, task.fds)
            except (ChannelClosed, OSError):
                self.pending.appendleft(task)     # the worker is gone: its EOF comes next
                return
            queue.append(task)
            self.sent[worker] += 1
            return

    def stop_workers(self):
        with self.lock:
            workers = list(self.inflight)
        for worker in workers:
            try:
                worker.endpoint.send(tasks.STOP, b"")
            except (ChannelClosed, OSError):
                pass
        for worker in workers:
            if worker.join(10) is None:
                worker.terminate()
        with self.lock:
            self.inflight.clear()
            self.sent.clear()
            self.wakeup.close()
