"""Shared fixtures: forked children with a deadline (always reaped), unique shm names,
and polling helpers for the waiter table."""
import os
import signal
import sys
import time
import traceback
import uuid

import pytest

# Exit status of a child whose function raised (its traceback goes to stderr).
CHILD_RAISED = 70


class Child:
    """A forked child running one function; ``join()`` returns its exit code."""

    def __init__(self, pid):
        self.pid = pid
        self.status = None

    def join(self, timeout=20.0):
        """Exit code of the child; kills it and fails the test past the deadline."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"child {self.pid} still running after {timeout} s (killed)")
            time.sleep(0.002)
        return self.status

    def kill(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def _run_child(fn, args):
    code = CHILD_RAISED
    try:
        result = fn(*args)
        code = 0 if result is None else int(result)
    except BaseException:  # noqa: BLE001  (report anything, never return into pytest)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@pytest.fixture
def fork():
    """``fork(fn, *args)`` runs fn in a forked child; every child is killed and reaped
    when the test ends, passed or not. fn's return (None = 0) is the exit code."""
    children = []

    def start(fn, *args):
        pid = os.fork()
        if pid == 0:
            _run_child(fn, args)
        child = Child(pid)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


@pytest.fixture
def shm_name():
    """A fresh POSIX shm name; unlinked after the test if it still exists."""
    name = f"pyclusterc-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def waiters(ta, index):
    """How many Atomics.wait callers are registered on ta[index] (any process)."""
    from pyclusterc._lowlevel.native import lib
    return lib.pc_waiters(ta._header, ta.byte_offset + index * ta.BYTES_PER_ELEMENT)


def poll(predicate, timeout=10.0, what="condition"):
    """Wait until predicate() is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def wait_for_waiters(ta, index, n, timeout=10.0):
    poll(lambda: waiters(ta, index) == n, timeout, f"{n} waiter(s) on index {index}")


@pytest.fixture
def runtime_dir():
    """A private XDG_RUNTIME_DIR: the test's control sockets live there, nobody else's.
    Short, under /tmp: a Unix socket path has at most 107 bytes."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="pc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
