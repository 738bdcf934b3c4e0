"""WorkerPool: a concurrent.futures.Executor whose crashed workers fail only their task."""
import concurrent.futures as cf
import os
import signal
import time

import pytest

from pyclusterc import Int32Array
from pyclusterc.pool import WorkerDied, WorkerPool, usable_cpus

BACKENDS = ["process", "thread"]


def square(x):
    return x * x


def fail(msg):
    raise KeyError(msg)


def die(how):
    if how == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def pid_after(delay):
    time.sleep(delay)
    return os.getpid()


def bump(counter_buffer, n):
    counter = Int32Array(counter_buffer)
    for _ in range(n):
        counter.add(0, 1)
    return n


_state = []


def remember(value):
    _state.append(value)


def read_state():
    return list(_state)


@pytest.fixture
def pool():
    pools = []

    def make(*args, **kw):
        p = WorkerPool(*args, **kw)
        pools.append(p)
        return p

    yield make
    for p in pools:
        for w in p.workers:
            w.terminate()
        p.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_submit_map_and_exceptions(pool, backend):
    p = pool(2, backend=backend)
    assert p.submit(square, 7).result(10) == 49
    assert list(p.map(square, range(20))) == [x * x for x in range(20)]
    assert list(p.map(square, range(20), chunksize=6)) == [x * x for x in range(20)]
    with pytest.raises(KeyError, match="nope"):
        p.submit(fail, "nope").result(10)
    assert isinstance(p, cf.Executor)


@pytest.mark.parametrize("how", ["signal", "exit"])
def test_crash_fails_only_its_task_and_pool_continues(pool, how):
    p = pool(2)
    slow = [p.submit(pid_after, 0.3) for _ in range(2)]
    crash = p.submit(die, how)
    with pytest.raises(WorkerDied, match="SIGKILL" if how == "signal" else "code 3"):
        crash.result(20)
    assert all(isinstance(f.result(20), int) for f in slow)
    assert list(p.map(square, range(10))) == [x * x for x in range(10)]
    assert len(p.workers) == 2


def test_shared_counter_through_pool_args(pool):
    counter = Int32Array(1)
    p = pool(2)
    assert sum(p.map(bump, [counter.buffer] * 8, [5000] * 8)) == 40000
    assert counter[0] == 40000


def test_initializer_and_max_tasks_per_child(pool):
    p = pool(1, initializer=remember, initargs=("init",), max_tasks_per_child=2)
    assert p.submit(read_state).result(10) == ["init"]
    pids = {p.submit(pid_after, 0).result(10) for _ in range(4)}
    assert len(pids) >= 2


def test_shutdown_rejects_new_work_and_validates_input(pool):
    p = pool(1)
    p.shutdown()
    with pytest.raises(RuntimeError):
        p.submit(square, 1)
    with pytest.raises(ValueError):
        WorkerPool(0)
    with pytest.raises(ValueError):
        WorkerPool(1, backend="gpu")


def test_unpicklable_task_fails_its_future(pool):
    import threading
    p = pool(1)
    with pytest.raises(TypeError, match="lock"):
        p.submit(id, threading.Lock()).result(10)
    assert p.submit(lambda: 3).result(10) == 3    # by value, as cloudpickle sends it
    assert p.submit(square, 3).result(10) == 9


def test_usable_cpus():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_context_manager_waits(pool):
    with WorkerPool(2) as p:
        futures = [p.submit(square, i) for i in range(5)]
    assert [f.result(0) for f in futures] == [0, 1, 4, 9, 16]


# ---- the same code on a multi-host executor (Dask) ------------------------------------------------
def squares_report(executor):
    """Code written against the concurrent.futures.Executor interface only."""
    mapped = list(executor.map(square, range(20)))
    futures = [executor.submit(square, i) for i in range(5)]
    done, not_done = cf.wait(futures, timeout=60)
    failed = executor.submit(fail, "remote")
    with pytest.raises(KeyError, match="remote"):
        failed.result(60)
    first = next(cf.as_completed([executor.submit(square, 9)], timeout=60)).result()
    return sum(mapped), sorted(f.result() for f in done), len(not_done), first


def test_same_code_runs_on_workerpool_and_dask_executor(pool):
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is not installed: the Executor interface "
        "check against Client.get_executor() needs it")
    expected = squares_report(pool(2))
    assert expected == (2470, [0, 1, 4, 9, 16], 0, 81)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        executor = client.get_executor()
        assert isinstance(executor, cf.Executor)
        assert squares_report(executor) == expected
        executor.shutdown()


def test_map_takes_exactly_executor_map_arguments(pool):
    with pytest.raises(TypeError, match="progress"):
        pool(1).map(abs, range(3), progress=True)


def test_shutdown_from_a_done_callback_returns(pool):
    p = pool(1)
    future = p.submit(square, 4)
    stopped = []
    future.add_done_callback(lambda f: stopped.append(p.shutdown(wait=True)))  # manager thread
    assert future.result(10) == 16
    deadline = time.monotonic() + 10
    while p.workers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stopped == [None] and p.workers == ()
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(square, 1)
