"""Helpers for the tests adapted from CPython's Lib/test/test_concurrent_futures/
(util.py there): futures in fixed states, the executor mixin, and cross-process events
and counters on pyclusterc shared memory, standing in for multiprocessing.Manager()."""
import os
import signal
import subprocess
import sys
import time
import unittest
from concurrent.futures._base import (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING,
                                      RUNNING, Future)

from pyclusterc import Atomics, Int32Array
from pyclusterc.workers import WorkerPool

SHORT_TIMEOUT = 30.0
LONG_TIMEOUT = 60.0


def create_future(state=PENDING, exception=None, result=None):
    f = Future()
    f._state = state
    f._exception = exception
    f._result = result
    return f


PENDING_FUTURE = create_future(state=PENDING)
RUNNING_FUTURE = create_future(state=RUNNING)
CANCELLED_FUTURE = create_future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = create_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = create_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = create_future(state=FINISHED, result=42)


class SharedEvent:
    """threading.Event's set/wait/is_set across processes: one Int32Array cell. It
    travels to pool workers by fd, so both sides see the same memory."""

    def __init__(self):
        self.cell = Int32Array(1)

    def set(self):
        self.cell.store(0, 1)
        Atomics.notify(self.cell, 0)

    def is_set(self):
        return self.cell.load(0) == 1

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.cell.load(0) == 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            Atomics.wait(self.cell, 0, 0, left)
        return True


class SharedCounter:
    """A cross-process counter: add() from workers, value() and wait_for() in the test."""

    def __init__(self):
        self.cell = Int32Array(1)

    def add(self, n=1):
        old = self.cell.add(0, n)
        Atomics.notify(self.cell, 0)
        return old

    def value(self):
        return self.cell.load(0)

    def wait_for(self, target, timeout=SHORT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while (now := self.cell.load(0)) < target:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            Atomics.wait(self.cell, 0, now, min(left, 0.05))
        return True


class BaseTestCase(unittest.TestCase):
    pass


class WorkerPoolMixin:
    """ExecutorMixin of util.py with WorkerPool (fork, its only start method) as the
    executor; every worker left is terminated after the test."""
    executor_type = WorkerPool
    worker_count = 5
    executor_kwargs = {}

    def setUp(self):
        super().setUp()
        self.t1 = time.monotonic()
        self.executor = self.executor_type(max_workers=self.worker_count, **self.executor_kwargs)

    def tearDown(self):
        executor, self.executor = self.executor, None
        if executor is not None:
            for worker in executor.workers:
                worker.terminate()
            executor.shutdown(wait=True)
        dt = time.monotonic() - self.t1
        self.assertLess(dt, 300, "synchronization issue: test lasted too long")
        super().tearDown()

    def create_event(self):
        return SharedEvent()


def run_python(code, timeout=120, stdin=None):
    """Run ``python -c code`` in its own session, with stdin (a str) as its input;
    (rc, stdout, stderr) as bytes. Killed (the whole group) if it outlives timeout, and
    the test fails."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(None if stdin is None else stdin.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"python -c ... still running after {timeout} s (killed); "
                             f"stderr: {err.decode(errors='replace')}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def assert_python_ok(code, timeout=120):
    rc, out, err = run_python(code, timeout)
    if rc != 0:
        raise AssertionError(f"python -c ... exited with {rc}; stderr:\n{err.decode(errors='replace')}")
    return rc, out, err
