"""CPython's concurrent.futures tests for process pools (Lib/test/test_concurrent_futures/
executor.py, test_process_pool.py, test_init.py), run against WorkerPool.

Adapted from CPython, Copyright (c) 2001 Python Software Foundation; All Rights Reserved;
used under the PSF License Agreement (https://docs.python.org/3/license.html).
Changes: WorkerPool in place of ProcessPoolExecutor; shared-memory events and counters
(cfutil.py) in place of multiprocessing.Manager() objects; the assertions are theirs,
except where WorkerPool's documented design differs (a crashed worker fails only its own
task and is replaced), each marked "WorkerPool:". Tests of multiprocessing internals
are skipped with the reason.
"""
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
import unittest
import unittest.mock
import weakref
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures._base import BrokenExecutor

import pytest

from cfutil import SHORT_TIMEOUT, BaseTestCase, SharedCounter, SharedEvent, WorkerPoolMixin
from pyclusterc.workers import RemoteTraceback
from pyclusterc.workers import pool as pool_module

pytestmark = pytest.mark.timeout(180)


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


class MyObject(object):
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


class EventfulGCObj():
    """Sets its event when collected (in the worker that unpickled it)."""
    def __init__(self):
        self.event = SharedEvent()

    def __del__(self):
        self.event.set()


def _report_wait_return(started, gate, value):
    started.add(1)
    gate.wait()
    return value


# ---- executor.py ----------------------------------------------------------------------------
class ExecutorTest:

    def assertTaskRaises(self, exctype):
        return self.assertRaises(exctype)

    def test_submit(self):
        future = self.executor.submit(pow, 2, 8)
        self.assertEqual(256, future.result())

    def test_submit_keyword(self):
        future = self.executor.submit(mul, 2, y=8)
        self.assertEqual(16, future.result())
        future = self.executor.submit(capture, 1, self=2, fn=3)
        self.assertEqual(future.result(), ((1,), {'self': 2, 'fn': 3}))
        with self.assertRaises(TypeError):
            self.executor.submit(fn=capture, arg=1)
        with self.assertRaises(TypeError):
            self.executor.submit(arg=1)

    def test_map(self):
        self.assertEqual(
                list(self.executor.map(pow, range(10), range(10))),
                list(map(pow, range(10), range(10))))

        self.assertEqual(
                list(self.executor.map(pow, range(10), range(10), chunksize=3)),
                list(map(pow, range(10), range(10))))

    def test_map_exception(self):
        i = self.executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
        self.assertEqual(i.__next__(), (0, 1))
        self.assertEqual(i.__next__(), (0, 1))
        with self.assertTaskRaises(ZeroDivisionError):
            i.__next__()

    def test_map_timeout(self):
        results = []
        try:
            for i in self.executor.map(time.sleep,
                                       [0, 0, 6],
                                       timeout=5):
                results.append(i)
        except futures.TimeoutError:
            pass
        else:
            self.fail('expected TimeoutError')

        self.assertEqual([None, None], results)

    def test_shutdown_race_issue12456(self):
        # Issue #12456: race condition at shutdown where trying to post a
        # sentinel in the call queue blocks (the queue is full while processes
        # have exited).
        self.executor.map(str, [2] * (self.worker_count + 1))
        self.executor.shutdown()

    def test_no_stale_references(self):
        # Issue #16284: check that the executors don't unnecessarily hang onto
        # references.
        my_object = MyObject()
        my_object_collected = threading.Event()
        my_object_callback = weakref.ref(
            my_object, lambda obj: my_object_collected.set())
        self.assertIsNotNone(my_object_callback())
        # Deliberately discarding the future.
        self.executor.submit(my_object.my_method)
        del my_object

        collected = my_object_collected.wait(timeout=SHORT_TIMEOUT)
        self.assertTrue(collected,
                        "Stale reference not collected within timeout.")

    def test_max_workers_negative(self):
        for number in (0, -1):
            with self.assertRaisesRegex(ValueError,
                                        "max_workers must be greater "
                                        "than 0"):
                self.executor_type(max_workers=number)

    def test_free_reference(self):
        # Issue #14406: Result iterator should not keep an internal
        # reference to result objects.
        for obj in self.executor.map(make_dummy_object, range(10)):
            wr = weakref.ref(obj)
            del obj
            self.assertIsNone(wr())


# ---- test_process_pool.py -------------------------------------------------------------------
class ProcessPoolExecutorTest(ExecutorTest):

    def test_killed_child(self):
        # When a child process is abruptly terminated, the whole pool gets
        # "broken".
        # WorkerPool: only the task the child was running fails (with WorkerDied, a
        # BrokenProcessPool); the child is replaced and submitting goes on working.
        started = SharedCounter()
        futures = [self.executor.submit(_report_wait_return, started, SharedEvent(), 0)]
        # Get one of the processes, and terminate (kill) it
        # WorkerPool: every one, as which one holds the task is not public, once the
        # task runs.
        self.assertTrue(started.wait_for(1))
        killed = {w.pid for w in self.executor.workers}
        for pid in killed:
            os.kill(pid, signal.SIGTERM)
        for fut in futures:
            self.assertRaises(BrokenProcessPool, fut.result)
        # Once replaced (a task sent to a worker as it dies fails with it).
        deadline = time.monotonic() + SHORT_TIMEOUT
        while killed & {w.pid for w in self.executor.workers}:
            self.assertLess(time.monotonic(), deadline, "killed workers not replaced")
            time.sleep(0.01)
        self.assertEqual(self.executor.submit(pow, 2, 8).result(SHORT_TIMEOUT), 256)

    def test_broken_process_pool_traceback(self):
        # When a child process is abruptly terminated, the whole pool gets
        # "broken", and a BrokenProcessPool exception should be created
        # for each future instead of sharing one exception among all futures.
        # WorkerPool: every worker is killed, so every running task fails.
        event = self.create_event()
        started = SharedCounter()
        futures = [self.executor.submit(_report_wait_return, started, event, i) for i in range(3)]
        self.assertTrue(started.wait_for(3))   # WorkerPool: all three running
        for w in self.executor.workers:
            os.kill(w.pid, signal.SIGTERM)
        for fut in futures:
            # Don't use assertRaises(): it clears the traceback off exc.
            try:
                fut.result()
            except BrokenProcessPool as exc:
                tb = exc.__traceback__
            else:
                self.fail("BrokenProcessPool not raised")
            count = sum(
                1
                for frame_summary in traceback.extract_tb(tb)
                if frame_summary.filename == __file__
            )
            # This code file should appear exactly once in the traceback.
            # A shared exception would accumulate a frame per result() call.
            self.assertEqual(count, 1)

    def test_map_chunksize(self):
        def bad_map():
            list(self.executor.map(pow, range(40), range(40), chunksize=-1))

        ref = list(map(pow, range(40), range(40)))
        self.assertEqual(
            list(self.executor.map(pow, range(40), range(40), chunksize=6)),
            ref)
        self.assertEqual(
            list(self.executor.map(pow, range(40), range(40), chunksize=50)),
            ref)
        self.assertEqual(
            list(self.executor.map(pow, range(40), range(40), chunksize=40)),
            ref)
        self.assertRaises(ValueError, bad_map)

    @classmethod
    def _test_traceback(cls):
        raise RuntimeError(123) # some comment

    def test_traceback(self):
        # We want ensure that the traceback from the child process is
        # contained in the traceback raised in the main process.
        future = self.executor.submit(self._test_traceback)
        with self.assertRaises(Exception) as cm:
            future.result()

        exc = cm.exception
        self.assertIs(type(exc), RuntimeError)
        self.assertEqual(exc.args, (123,))
        cause = exc.__cause__
        self.assertIs(type(cause), RemoteTraceback)
        self.assertIn('raise RuntimeError(123) # some comment', cause.tb)

        import contextlib
        import io
        f1 = io.StringIO()
        with contextlib.redirect_stderr(f1):
            try:
                raise exc
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
        self.assertIn('raise RuntimeError(123) # some comment',
                      f1.getvalue())

    def test_traceback_when_child_process_terminates_abruptly(self):
        # gh-139462 enhancement - BrokenProcessPool exceptions
        # should describe which process terminated.
        exit_code = 99
        with self.executor_type(max_workers=1) as executor:
            future = executor.submit(os._exit, exit_code)
            with self.assertRaises(BrokenProcessPool) as bpe:
                future.result()

        cause = bpe.exception.__cause__
        self.assertIsInstance(cause, RemoteTraceback)
        self.assertIn(
            f"terminated abruptly with exit code {exit_code}", cause.tb
        )

    def test_ressources_gced_in_workers(self):
        # Ensure that argument for a job are correctly gc-ed after the job
        # is finished
        obj = EventfulGCObj()
        future = self.executor.submit(id, obj)
        future.result()

        self.assertTrue(obj.event.wait(timeout=1))

    def test_saturation(self):
        executor = self.executor
        event = SharedEvent()
        job_count = 15 * executor._max_workers
        fs = [executor.submit(event.wait) for _ in range(job_count)]
        self.assertEqual(len(executor.workers), executor._max_workers)
        event.set()
        futures.wait(fs, timeout=SHORT_TIMEOUT)

    @unittest.skip("incompatible with the fork start method (CPython skips it there too): "
                   "WorkerPool forks its workers when it starts")
    def test_idle_process_reuse_one(self):
        pass

    @unittest.skip("incompatible with the fork start method (CPython skips it there too): "
                   "WorkerPool forks its workers when it starts")
    def test_idle_process_reuse_multiple(self):
        pass

    def test_max_tasks_per_child(self):
        # WorkerPool forks and still honours max_tasks_per_child: the assertions of
        # CPython's spawn branch (fork raises ValueError there).
        executor = self.executor_type(1, max_tasks_per_child=3)
        f1 = executor.submit(os.getpid)
        original_pid = f1.result()
        # The worker pid remains the same as the worker could be reused
        f2 = executor.submit(os.getpid)
        self.assertEqual(f2.result(), original_pid)
        self.assertEqual(len(executor.workers), 1)
        f3 = executor.submit(os.getpid)
        self.assertEqual(f3.result(), original_pid)

        # A new worker is spawned, with a statistically different pid,
        # while the previous was reaped.
        f4 = executor.submit(os.getpid)
        new_pid = f4.result()
        self.assertNotEqual(original_pid, new_pid)
        self.assertEqual(len(executor.workers), 1)

        executor.shutdown()

    @unittest.skip("checks multiprocessing's default context (_mp_context); WorkerPool forks")
    def test_max_tasks_per_child_defaults_to_spawn_context(self):
        pass

    def test_max_tasks_per_child_pending_tasks_gh115634(self):
        # gh-115634: A worker exiting at its max_tasks_per_child limit left a
        # stale token in the idle worker semaphore, so no replacement worker
        # was spawned and the remaining queued tasks deadlocked.
        for max_workers, max_tasks, num_tasks in [(1, 2, 6), (2, 2, 8)]:
            with self.subTest(max_workers=max_workers, max_tasks=max_tasks):
                executor = self.executor_type(
                        max_workers, max_tasks_per_child=max_tasks)
                try:
                    futures = [executor.submit(mul, i, 2)
                               for i in range(num_tasks)]
                    results = [f.result(timeout=SHORT_TIMEOUT)
                               for f in futures]
                    self.assertEqual(results,
                                     [i * 2 for i in range(num_tasks)])
                finally:
                    executor.shutdown(wait=True, cancel_futures=True)

    def _run_stranded_worker_exit_test(self, *, shutdown, drop_reference):
        # A worker exits upon reaching its max_tasks_per_child limit while
        # more submitted work is queued.
        # WorkerPool: its manager does not need the pool object to replace a
        # worker, so the queued work runs even once the pool was garbage collected
        # (CPython fails those futures with "garbage collected" instead).
        started = SharedCounter()
        gate = SharedEvent()

        executor = self.executor_type(1, max_tasks_per_child=1)
        futs = [executor.submit(_report_wait_return, started, gate, i)
                for i in range(3)]
        manager_thread = executor._manager.thread
        self.addCleanup(manager_thread.join, SHORT_TIMEOUT)
        self.assertTrue(started.wait_for(1))
        if shutdown:
            executor.shutdown(wait=False)
        if drop_reference:
            executor_ref = weakref.ref(executor)
            executor = None
            deadline = time.monotonic() + SHORT_TIMEOUT
            while executor_ref() is not None and time.monotonic() < deadline:
                import gc
                gc.collect()
                time.sleep(0.01)
            self.assertIsNone(executor_ref())
        gate.set()

        self.assertEqual(futs[0].result(timeout=SHORT_TIMEOUT), 0)
        results = [f.result(timeout=SHORT_TIMEOUT)
                   for f in futs[1:]]
        self.assertEqual(results, [1, 2])
        if executor is not None:
            executor.shutdown()

    def test_shutdown_no_wait_max_tasks_gh119592(self):
        for drop_reference in (False, True):
            with self.subTest(drop_reference=drop_reference):
                self._run_stranded_worker_exit_test(
                        shutdown=True, drop_reference=drop_reference)

    def test_gc_during_max_tasks_worker_exit_gh152967(self):
        self._run_stranded_worker_exit_test(
                shutdown=False, drop_reference=True)

    @unittest.skip("terminate_workers()/kill_workers() (CPython 3.14) are not part of WorkerPool")
    def test_force_shutdown_during_max_tasks_worker_exit(self):
        pass

    def test_failed_worker_replacement_breaks_pool(self):
        # If no replacement worker can be started and no workers remain,
        # the pool must break rather than strand the queued futures.
        started = SharedCounter()
        gate = SharedEvent()
        executor = self.executor_type(1, max_tasks_per_child=1)
        self.addCleanup(executor.shutdown)
        futs = [executor.submit(_report_wait_return, started, gate, i)
                for i in range(3)]
        self.assertTrue(started.wait_for(1))
        patch = unittest.mock.patch.object(pool_module, "Worker",
                                           side_effect=OSError("spawn failed"))
        patch.start()
        self.addCleanup(patch.stop)
        gate.set()

        self.assertEqual(futs[0].result(timeout=SHORT_TIMEOUT), 0)
        for fut in futs[1:]:
            with self.assertRaisesRegex(BrokenProcessPool, "could not be started"):
                fut.result(timeout=SHORT_TIMEOUT)

    def test_max_tasks_early_shutdown(self):
        executor = self.executor_type(
                3, max_tasks_per_child=1)
        futures = []
        for i in range(6):
            futures.append(executor.submit(mul, i, i))
        executor.shutdown()
        for i, future in enumerate(futures):
            self.assertEqual(future.result(), mul(i, i))

    @unittest.skip("mocks threading._start_joinable_thread to fail the queue feeder thread, "
                   "which WorkerPool does not have")
    def test_python_finalization_error(self):
        pass

    @unittest.skip("terminate_workers()/kill_workers() (CPython 3.14) are not part of WorkerPool")
    def test_force_shutdown_workers(self):
        pass


class WorkerPoolExecutorTest(WorkerPoolMixin, ProcessPoolExecutorTest, BaseTestCase):
    pass


# ---- test_init.py ---------------------------------------------------------------------------
INITIALIZER_STATUS = 'uninitialized'


def init(x):
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status():
    return INITIALIZER_STATUS


def init_fail():
    time.sleep(0.1)  # let some futures be scheduled
    raise ValueError('error in initializer')


class InitializerMixin(WorkerPoolMixin):
    worker_count = 2

    def setUp(self):
        global INITIALIZER_STATUS
        INITIALIZER_STATUS = 'uninitialized'
        self.executor_kwargs = dict(initializer=init,
                                    initargs=('initialized',))
        super().setUp()

    def test_initializer(self):
        futures = [self.executor.submit(get_init_status)
                   for _ in range(self.worker_count)]

        for f in futures:
            self.assertEqual(f.result(), 'initialized')


class _CollectingHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.CRITICAL)
        self.records = []

    def emit(self, record):
        self.records.append(record)


class FailingInitializerMixin(WorkerPoolMixin):
    worker_count = 2

    def setUp(self):
        # WorkerPool logs the worker's traceback in the parent. Its workers start with the
        # pool, so (as CPython does for process pools with its log queue) the handler is
        # in place before the pool exists: the initializer may fail before the test body.
        self.executor_kwargs = dict(initializer=init_fail)
        self.log_records = _CollectingHandler()
        logger = logging.getLogger('concurrent.futures')
        logger.addHandler(self.log_records)
        self.addCleanup(logger.removeHandler, self.log_records)
        super().setUp()

    def test_initializer(self):
        with self._assert_logged('ValueError: error in initializer'):
            try:
                future = self.executor.submit(get_init_status)
            except BrokenExecutor:
                # Perhaps the executor is already broken
                pass
            else:
                with self.assertRaises(BrokenExecutor):
                    future.result()

            # At some point, the executor should break
            deadline = time.monotonic() + SHORT_TIMEOUT
            while not self.executor.broken:
                self.assertLess(time.monotonic(), deadline, "executor not broken")
                time.sleep(0.01)

            # ... and from this point submit() is guaranteed to fail
            with self.assertRaises(BrokenExecutor):
                self.executor.submit(get_init_status)

    @contextlib.contextmanager
    def _assert_logged(self, msg):
        yield
        output = [self.log_records.format(record) for record in self.log_records.records]
        self.assertTrue(any(msg in line for line in output), output)


class WorkerPoolInitializerTest(InitializerMixin, BaseTestCase):
    pass


class WorkerPoolFailingInitializerTest(FailingInitializerMixin, BaseTestCase):
    pass


@unittest.skip("checks multiprocessing's resource tracker, which WorkerPool does not use")
class FailingInitializerResourcesTest(unittest.TestCase):
    def test_spawn(self):
        pass
