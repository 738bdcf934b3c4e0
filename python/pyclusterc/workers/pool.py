"""WorkerPool: a concurrent.futures.Executor over pyclusterc Workers.

Unlike ProcessPoolExecutor, a worker that dies (a signal, os._exit, a segfault) fails
only the task it was running, with WorkerDied saying how it died; it is replaced and
the pool goes on. Tasks and results travel over the workers' channels, so SharedBuffers
and typed arrays among the arguments arrive as the same memory.
"""
import collections
import concurrent.futures as cf
import itertools
import os
import sys
import threading

from .._lowlevel.cpus import usable_cpus
from ..ipc import ring as _ring
from . import Worker, WorkerError

__all__ = ["WorkerPool", "WorkerDied", "usable_cpus"]


class WorkerDied(RuntimeError):
    """The worker running a task ended before finishing it."""


def _pool_worker(initializer, initargs, max_tasks):
    """A pool worker's main loop: run (task_id, fn, args, kwargs) until told to stop."""
    from . import _context
    port = _context().parent_port
    if initializer is not None:
        initializer(*initargs)
    done = 0
    for task in port:
        if task is None:
            return
        task_id, fn, args, kwargs = task
        try:
            reply = (task_id, True, fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001  (the task's failure goes to its future)
            reply = (task_id, False, _remote_error(e))
        try:
            port.post_message(reply)
        except TypeError as e:
            port.post_message((task_id, False, _remote_error(e)))
        done += 1
        if max_tasks and done >= max_tasks:
            return


def _remote_error(e):
    import pickle
    import traceback
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        pickle.dumps(e)
        return e, tb
    except Exception:  # noqa: BLE001
        return WorkerError(f"{type(e).__name__}: {e}", tb, type(e).__qualname__), tb


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        super().__init__(tb)

    def __str__(self):
        return f'\n"""\n{self.args[0]}"""'


def _chunks(iterables, chunksize):
    it = zip(*iterables)
    while chunk := tuple(itertools.islice(it, chunksize)):
        yield chunk


def _run_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class WorkerPool(cf.Executor):
    def __init__(self, max_workers=None, initializer=None, initargs=(), max_tasks_per_child=None,
                 backend="process"):
        if max_workers is None:
            max_workers = usable_cpus()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if max_tasks_per_child is not None and (not isinstance(max_tasks_per_child, int)
                                                or max_tasks_per_child < 1):
            raise ValueError(f"max_tasks_per_child must be an int >= 1 or None, got {max_tasks_per_child!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if backend not in ("process", "thread"):
            raise ValueError(f"WorkerPool backend must be 'process' or 'thread', not {backend!r}")
        self._max_workers = max_workers
        self._worker_args = (initializer, tuple(initargs), max_tasks_per_child)
        self._max_tasks = max_tasks_per_child
        self._backend = backend
        self._lock = threading.Lock()
        self._pending = collections.deque()    # (task_id, future, fn, args, kwargs)
        self._running = {}                     # Worker -> task or None (idle)
        self._task_counts = {}
        self._ids = itertools.count()
        self._shutdown = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with self._lock:
            for _ in range(max_workers):
                self._spawn_locked()
        self._manager = threading.Thread(target=self._manage, daemon=True, name="pyclusterc-pool")
        self._manager.start()

    # -- Executor API -------------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs):
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        future = cf.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a WorkerPool after shutdown()")
            self._pending.append((next(self._ids), future, fn, args, kwargs))
            self._dispatch_locked()
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1, progress=False):
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        if chunksize == 1:
            results = super().map(fn, *iterables, timeout=timeout)
        else:
            chunks = super().map(_run_chunk, itertools.repeat(fn), _chunks(iterables, chunksize),
                                 timeout=timeout)
            results = itertools.chain.from_iterable(chunks)
        if not progress:
            return results
        sizes = [len(it) for it in iterables if hasattr(it, "__len__")]
        total = min(sizes) if len(sizes) == len(iterables) and sizes else None
        return _with_progress(results, total)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[1].cancel()
        self._wake()
        if wait:
            self._manager.join()

    # -- internals ----------------------------------------------------------------------
    def _spawn_locked(self):
        w = Worker(_pool_worker, args=self._worker_args, backend=self._backend,
                   name=f"pool-worker-{len(self._task_counts)}")
        self._running[w] = None
        self._task_counts[w] = 0

    def _dispatch_locked(self):
        for w, task in self._running.items():
            if not self._pending:
                return
            if task is not None or (self._max_tasks and self._task_counts[w] >= self._max_tasks):
                continue
            while self._pending:
                task = self._pending.popleft()
                if task[1].set_running_or_notify_cancel():
                    break
            else:
                return
            task_id, future, fn, args, kwargs = task
            try:
                w.post_message((task_id, fn, args, kwargs))
            except Exception as e:  # noqa: BLE001  (e.g. fn or an argument does not pickle)
                future.set_exception(e)
                continue
            self._running[w] = task
            self._task_counts[w] += 1

    def _wake(self):
        with self._lock:
            if self._wake_w is None:     # the manager has finished and closed it
                return
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def _manage(self):
        try:
            while True:
                with self._lock:
                    workers = list(self._running)
                    idle = all(t is None for t in self._running.values())
                    if self._shutdown and idle and not self._pending:
                        break
                by_endpoint = {w._endpoint: w for w in workers}
                ready = _ring.wait_any(list(by_endpoint), -1, [self._wake_r])
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                for ep in ready:
                    self._collect(by_endpoint[ep])
        finally:
            self._stop_workers()

    def _collect(self, w):
        while True:
            try:
                reply = w.receive(0)
            except TimeoutError:
                return
            except (EOFError, WorkerError) as e:
                if isinstance(e, WorkerError):     # the initializer raised: the worker is ending
                    continue
                self._replace(w)
                return
            task_id, ok, value = reply
            with self._lock:
                task = self._running[w]
                self._running[w] = None
                self._dispatch_locked()
            future = task[1]
            if ok:
                future.set_result(value)
            else:
                exc, tb = value
                exc.__cause__ = _RemoteTraceback(tb)
                future.set_exception(exc)

    def _replace(self, w):
        with self._lock:
            task = self._running.pop(w)
            self._task_counts.pop(w)
            if not self._shutdown or self._pending or any(self._running.values()):
                self._spawn_locked()
            self._dispatch_locked()
        if task is not None:
            how = f"was killed by {w.signal}" if w.signal else f"exited with code {w.exit_code}"
            task[1].set_exception(WorkerDied(
                f"worker {w.name} (pid {w.pid}) {how} while running this task; it was replaced"))

    def _stop_workers(self):
        with self._lock:
            workers = list(self._running)
            self._running.clear()
        for w in workers:
            w.post_message(None)
        for w in workers:
            if w.join(10) is None:
                w.terminate()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = None


def _with_progress(results, total):
    """A tqdm progress bar over the results (a plain counter if tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(results, total=total, unit="task")
        return
    tty = sys.stderr.isatty()
    for n, value in enumerate(results, 1):
        if tty:
            sys.stderr.write(f"\r{n} done")
            sys.stderr.flush()
        yield value
    if tty:
        sys.stderr.write("\n")
