"""WorkerPool as a data-science user meets it: whatever a task does, its future gets an
exception that says what happened and the pool goes on; notebook order works; progress
bars over any Executor. Each user scenario runs in its own interpreter with a deadline
(cfutil.run_python kills its process group), so a hang fails the test instead of the
suite."""
import concurrent.futures as cf
import textwrap

import pytest

from cfutil import assert_python_ok, run_python
from pyclusterc import progress
from pyclusterc.workers import WorkerPool

pytestmark = pytest.mark.timeout(180)


def script(body):
    return textwrap.dedent(body)


def test_exception_that_does_not_unpickle_fails_only_its_future():
    _, out, err = assert_python_ok(script("""
        from pyclusterc.workers import WorkerPool, TaskTransferError

        class PairError(Exception):          # pickles, but unpickling calls PairError(msg)
            def __init__(self, a, b):
                super().__init__(f"{a} and {b}")

        def fail():
            raise PairError("left", "right")

        with WorkerPool(1) as pool:
            futures = [pool.submit(fail) for _ in range(3)]
            for f in futures:
                try:
                    f.result(30)
                except TaskTransferError as e:
                    text = str(e)
                    assert "PairError: left and right" in text, text
                    assert "could not be rebuilt" in text, text
                    assert "in fail" in e.remote_traceback, e.remote_traceback
            print("after", pool.submit(pow, 2, 5).result(30))
        """))
    assert out.split() == [b"after", b"32"], err


def test_result_that_does_not_unpickle_and_exits_while_pickling():
    _, out, err = assert_python_ok(script("""
        import pickle
        from pyclusterc.workers import WorkerPool, TaskTransferError

        def _exit():
            raise SystemExit(3)

        def _interrupt():
            raise KeyboardInterrupt

        class ExitsWhenUnpickled:
            def __reduce__(self):
                return _exit, ()

        class ExitsWhenPickled:
            def __reduce__(self):
                _exit()

        class InterruptsWhenPickled:
            def __reduce__(self):
                _interrupt()

        class RefusesToPickle:
            def __reduce__(self):
                raise pickle.PicklingError("not today")

        def make(cls):
            return cls()

        with WorkerPool(1) as pool:
            for cls, expected in [(ExitsWhenUnpickled, TaskTransferError),
                                  (ExitsWhenPickled, SystemExit),
                                  (InterruptsWhenPickled, KeyboardInterrupt),
                                  (RefusesToPickle, pickle.PicklingError)]:
                try:
                    pool.submit(make, cls).result(30)
                except BaseException as e:
                    assert type(e) is expected or isinstance(e, expected), (cls, repr(e))
                    print(cls.__name__, type(e).__name__)
                else:
                    raise AssertionError(f"{cls.__name__}: no exception")
            print("after", pool.submit(pow, 3, 2).result(30))
        """))
    lines = out.decode().splitlines()
    assert lines == ["ExitsWhenUnpickled TaskTransferError", "ExitsWhenPickled SystemExit",
                     "InterruptsWhenPickled KeyboardInterrupt",
                     "RefusesToPickle PicklingError", "after 9"], err


# Fed on stdin: __main__ has no file, as in a notebook or the REPL.
NOTEBOOK = """
import os, signal
from pyclusterc.workers import WorkerPool
pool = WorkerPool(2)
print("warm", sum(pool.map(abs, range(-3, 0))))

def defined_after_start(x):          # the workers were forked before this existed
    return x * 10

class Point:
    def __init__(self, x):
        self.x = x
    def norm(self):
        return abs(self.x)

print("fn", list(pool.map(defined_after_start, range(3))))
print("class", pool.submit(Point(-4).norm).result(30), pool.submit(Point, 5).result(30).x)
print("lambda", pool.submit(lambda: "ok").result(30))

killed = {w.pid for w in pool.workers}
for pid in killed:                    # replacement workers are forked from here on
    os.kill(pid, signal.SIGKILL)
import time
deadline = time.monotonic() + 30
while killed & {w.pid for w in pool.workers} and time.monotonic() < deadline:
    time.sleep(0.01)

def defined_after_replacement(x):
    return -x

print("after", list(pool.map(defined_after_replacement, range(3), chunksize=2)))
pool.shutdown()
"""


def test_notebook_order_functions_and_classes_defined_later():
    rc, out, err = run_python("import sys; exec(sys.stdin.read())", timeout=90, stdin=NOTEBOOK)
    lines = out.decode().splitlines()
    assert lines == ["warm 6", "fn [0, 10, 20]", "class 4 5", "lambda ok",
                     "after [0, -1, -2]"], err.decode()
    assert "WorkerDied" not in err.decode() and "exited with code" not in err.decode(), err


def test_task_that_cannot_be_found_in_the_worker_is_named():
    _, out, err = assert_python_ok(script("""
        import sys, types
        from pyclusterc.workers import WorkerPool, TaskTransferError

        with WorkerPool(1) as pool:
            ghost = types.ModuleType("ghost_module")   # only in the parent, after the fork
            exec("def vanish(): return 1", ghost.__dict__)
            sys.modules["ghost_module"] = ghost
            try:
                pool.submit(ghost.vanish).result(30)
            except TaskTransferError as e:
                print(str(e).splitlines()[0])
            print("after", pool.submit(pow, 2, 2).result(30))
        """))
    first, after = out.decode().splitlines()
    assert "ghost_module.vanish" in first and "No module named 'ghost_module'" in first, first
    assert after == "after 4", err


def test_worker_killed_while_sending_a_large_result():
    _, out, err = assert_python_ok(script("""
        import os, signal, threading, time
        from pyclusterc.workers import WorkerPool, WorkerDied

        def big_then_killed():
            threading.Timer(0.002, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return b"x" * (64 << 20)

        with WorkerPool(1) as pool:
            outcomes = set()
            for _ in range(3):
                try:
                    outcomes.add(len(pool.submit(big_then_killed).result(60)))
                except WorkerDied as e:
                    outcomes.add("died")
            print(sorted(map(str, outcomes)))
            print("after", pool.submit(pow, 2, 3).result(30))
        """), timeout=120)
    lines = out.decode().splitlines()
    assert lines[-1] == "after 8", err
    assert set(eval(lines[0])) <= {"died", str(64 << 20)}, lines


def test_pool_dropped_without_shutdown_finishes_and_stops_its_workers():
    _, out, err = assert_python_ok(script("""
        import gc
        from pyclusterc.workers import WorkerPool
        pool = WorkerPool(2)
        results = pool.map(abs, range(-50, 0))
        workers = pool.workers
        del pool
        gc.collect()
        print(sum(results))
        print([w.join(30) for w in workers])
        """))
    assert out.decode().split("\n")[:2] == ["1275", "[0, 0]"], err


def test_failing_initializer_breaks_the_pool_without_respawning():
    with pytest.raises(cf.BrokenExecutor) as info, WorkerPool(2, initializer=_fail_init) as pool:
        pool.submit(pow, 2, 2).result(30)
    assert "initializer" in str(info.value) and "ZeroDivisionError" in str(info.value)
    assert pool.workers == ()
    with pytest.raises(cf.BrokenExecutor):
        pool.submit(pow, 2, 2)


def _fail_init():
    1 / 0


# ---- progress over any Executor -------------------------------------------------------------
def square(x):
    return x * x


def _bar_counts(capsys, results, expected):
    assert list(results) == expected
    err = capsys.readouterr().err
    assert f"{len(expected)}/{len(expected)}" in err, err


@pytest.mark.parametrize("make", [lambda: WorkerPool(2), lambda: cf.ThreadPoolExecutor(2)],
                         ids=["WorkerPool", "ThreadPoolExecutor"])
def test_progress_over_map_and_as_completed(capsys, make):
    with make() as executor:
        _bar_counts(capsys, progress(executor.map(square, range(6)), total=6),
                    [0, 1, 4, 9, 16, 25])
        futures = [executor.submit(square, i) for i in range(4)]
        done = sorted(f.result() for f in progress(cf.as_completed(futures), total=len(futures)))
        assert done == [0, 1, 4, 9]
        assert "4/4" in capsys.readouterr().err


def test_progress_over_dask_executor(capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        executor = client.get_executor()
        _bar_counts(capsys, progress(executor.map(square, range(5)), total=5), [0, 1, 4, 9, 16])
        executor.shutdown()


def test_progress_total_from_len_and_bad_total():
    assert list(progress([3, 4])) == [3, 4]
    with pytest.raises(ValueError, match="total must be a whole number"):
        progress([1], total=-1)


def test_tasks_still_running_at_interpreter_exit_deliver_their_results():
    """The script ends while its tasks run: the pool's exit hook waits for them, and
    each result arrives. Before, weakref.finalize's own exit hook (registered after the
    pool's, so run before it) closed every endpoint's socket under the pool's manager:
    the worker saw EOF, its task failed with WorkerDied and the worker was replaced (and
    a replacement the pool then waited for could hang the exit)."""
    rc, out, err = assert_python_ok(textwrap.dedent("""
        import time
        from pyclusterc.workers import WorkerPool

        def sleep_and_return(t):
            time.sleep(t)
            return "apple"

        def report(future):
            print(repr(future.exception()) if future.exception() else future.result(), flush=True)

        if __name__ == "__main__":
            pool = WorkerPool(3)
            for _ in range(3):
                pool.submit(sleep_and_return, 0.5).add_done_callback(report)
        """))
    assert out.decode().split() == ["apple"] * 3, (out, err)


def _tell_pid_then_sleep(path, seconds):
    import os
    import time
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def test_a_worker_dying_during_shutdown_is_not_replaced_when_no_task_waits(tmp_path):
    """shutdown(wait=False) while one worker still runs a task: an idle worker that dies
    then is not replaced (nothing is left for a new one to do); the running task's
    result still arrives. Before, any task in flight anywhere made the pool fork a
    replacement, which then sat idle until the pool stopped."""
    import os
    import signal
    import time
    pool = WorkerPool(2)
    try:
        assert sorted(pool.map(abs, [-1, -2])) == [1, 2]   # both workers up
        told = tmp_path / "pid"
        busy = pool.submit(_tell_pid_then_sleep, str(told), 1.5)
        deadline = time.monotonic() + 10
        while not (told.exists() and told.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        running = int(told.read_text())
        before = {w.pid for w in pool.workers}
        assert running in before and len(before) == 2
        pool.shutdown(wait=False)
        (idle,) = before - {running}
        os.kill(idle, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while idle in {w.pid for w in pool.workers} and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # a replacement is forked as soon as the death is seen
        assert {w.pid for w in pool.workers} == {running}
        assert busy.result(10) == running
    finally:
        pool.shutdown(wait=True)
