"""Mutex, Condition, Semaphore and Barrier in a SharedBuffer, across threads and processes."""
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import poll
from pyclusterc import Atomics, Barrier, Condition, Int32Array, Mutex, Semaphore, SharedBuffer
from pyclusterc.shared import OwnerDied

# An exception in a helper thread (a waiter, wait_async's thread) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

ALL = [Mutex, Semaphore, Barrier]


def make(cls, buf, offset=0):
    if cls is Barrier:
        return Barrier(buf, offset, 2)
    return cls(buf, offset)


# ---- bad inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_bad_placement(cls):
    buf = SharedBuffer(64)
    with pytest.raises(TypeError):
        make(cls, bytearray(64))
    with pytest.raises(TypeError):
        make(cls, buf, 4.0)
    for offset in (1, 2, -4, 64, 64 - cls.BYTES + 4):
        with pytest.raises(ValueError) as e:
            make(cls, buf, offset)
        assert "\n" not in str(e.value)
    assert make(cls, buf, 64 - cls.BYTES).byte_offset == 64 - cls.BYTES
    closed = SharedBuffer(64)
    closed.close()
    with pytest.raises(ValueError):
        make(cls, closed)


def test_sizes():
    assert (Mutex.BYTES, Condition.BYTES, Semaphore.BYTES, Barrier.BYTES) == (4, 8, 8, 12)


def test_primitive_pins_its_buffer():
    buf = SharedBuffer(16)
    m = Mutex(buf)
    with pytest.raises(BufferError):
        buf.close()
    del m
    buf.close()


# ---- Mutex ----------------------------------------------------------------------------------

def test_mutex_basics():
    buf = SharedBuffer(8)
    m = Mutex(buf)
    assert not m.locked()
    assert m.acquire() is True
    assert m.locked()
    assert m.acquire(blocking=False) is False
    start = time.monotonic()
    assert m.acquire(timeout=0.1) is False
    assert 0.1 <= time.monotonic() - start < 1.5
    assert m.acquire(timeout=0) is False
    assert m.acquire(timeout=-1) is False
    m.release()
    assert not m.locked()
    with pytest.raises(RuntimeError):
        m.release()
    with m:
        assert m.locked()
        with pytest.raises(ValueError, match="bytes 0..3"):
            Mutex(buf, 0)  # a second object over the same bytes in one process
    assert not m.locked()
    with pytest.raises(TypeError):
        m.acquire(timeout="1")


def test_mutex_across_threads():
    m = Mutex(SharedBuffer(4))
    m.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(m.acquire(timeout=10)))
    t.start()
    time.sleep(0.05)
    assert got == []
    m.release()
    t.join(10)
    assert got == [True]
    m.release()


def test_mutex_across_processes(fork):
    buf = SharedBuffer(8)
    m = Mutex(buf)
    flag = Int32Array(buf, 4, 1)

    def child():
        m.acquire()
        Atomics.store(flag, 0, 1)
        Atomics.notify(flag, 0)
        Atomics.wait(flag, 0, 1, 20)  # hold until the parent says so
        m.release()

    proc = fork(child)
    while Atomics.load(flag, 0) != 1:
        Atomics.wait(flag, 0, 0, 20)
    assert m.acquire(timeout=0.05) is False
    Atomics.store(flag, 0, 2)
    Atomics.notify(flag, 0)
    assert m.acquire(timeout=20) is True
    m.release()
    assert proc.join() == 0


def test_mutex_counter_across_processes_exact(fork):
    """A non-atomic read-modify-write under the Mutex: exact only if it excludes."""
    buf = SharedBuffer(16)
    m = Mutex(buf)
    counter = Int32Array(buf, 8, 1)
    n = 50_000

    def child():
        for _ in range(n):
            with m:
                value = counter[0]
                counter[0] = value + 1

    procs = [fork(child), fork(child)]
    for proc in procs:
        assert proc.join(timeout=60) == 0
    assert counter[0] == 2 * n
    assert not m.locked()


def test_mutex_acquire_survives_signals():
    m = Mutex(SharedBuffer(4))
    m.acquire()
    count = []
    old = signal.signal(signal.SIGUSR1, lambda *a: count.append(1))
    main = threading.main_thread().ident

    def send():
        for _ in range(3):
            time.sleep(0.05)
            signal.pthread_kill(main, signal.SIGUSR1)

    t = threading.Thread(target=send)
    try:
        t.start()
        start = time.monotonic()
        assert m.acquire(timeout=0.5) is False
        assert 0.5 <= time.monotonic() - start < 2
    finally:
        t.join(10)
        signal.signal(signal.SIGUSR1, old)
    assert len(count) == 3


# ---- Condition ------------------------------------------------------------------------------

def test_condition_bad_inputs():
    buf = SharedBuffer(16)
    m = Mutex(buf)
    with pytest.raises(TypeError):
        Condition(buf, 4, "mutex")
    with pytest.raises(ValueError):
        Condition(buf, 12, m)  # 8 bytes do not fit
    c = Condition(buf, 4, m)
    with pytest.raises(RuntimeError):
        c.wait(0)
    with pytest.raises(ValueError):
        c.notify(-1)
    with pytest.raises(ValueError):
        c.notify(1.0)


def test_condition_timeout():
    buf = SharedBuffer(16)
    c = Condition(buf, 4, Mutex(buf))
    with c:
        start = time.monotonic()
        assert c.wait(0.1) is False
        assert 0.1 <= time.monotonic() - start < 1.5
        assert c.mutex.locked()
        assert c.wait_for(lambda: False, 0.05) is False
        assert c.wait(0) is False


def test_condition_notify_one_and_all_threads():
    buf = SharedBuffer(16)
    c = Condition(buf, 4, Mutex(buf))
    state = Int32Array(buf, 12, 1)
    done = []

    def waiter():
        with c:
            done.append(c.wait_for(lambda: state[0] > 0, 10))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert done == []
    with c:
        state[0] = 1
        c.notify(1)
    poll(lambda: len(done) >= 1)
    with c:
        c.notify_all()
    for t in threads:
        t.join(10)
    assert done == [True] * 3
    c.notify(10 ** 30)  # any count


def test_condition_across_processes(fork):
    buf = SharedBuffer(16)
    c = Condition(buf, 4, Mutex(buf))
    state = Int32Array(buf, 12, 1)

    def child():
        with c:
            ok = c.wait_for(lambda: state[0] == 7, 20)
            state[0] = 8
            c.notify_all()
        return 0 if ok else 1

    proc = fork(child)
    time.sleep(0.05)
    with c:
        state[0] = 7
        c.notify_all()
        assert c.wait_for(lambda: state[0] == 8, 20)
    assert proc.join() == 0


# ---- Semaphore --------------------------------------------------------------------------------

def test_semaphore_basics():
    buf = SharedBuffer(16)
    s = Semaphore(buf, 0, 2)
    assert s.value == 2
    assert s.acquire() and s.acquire()
    assert s.value == 0
    assert s.acquire(blocking=False) is False
    start = time.monotonic()
    assert s.acquire(timeout=0.1) is False
    assert 0.1 <= time.monotonic() - start < 1.5
    s.release(3)
    with pytest.raises(ValueError, match="overlaps the Semaphore at bytes 0..7"):
        Semaphore(buf, 4)
    with s:
        assert s.value == 2
    assert s.value == 3


@pytest.mark.parametrize("value", [-1, 1.5, "1", 2 ** 31])
def test_semaphore_bad_value(value):
    with pytest.raises(ValueError):
        Semaphore(SharedBuffer(8), 0, value)


def test_semaphore_bad_release():
    s = Semaphore(SharedBuffer(8), 0, 0)
    for n in (0, -1, 1.0):
        with pytest.raises(ValueError):
            s.release(n)
    s.release(2 ** 31 - 1)
    s.release(2 ** 31)
    with pytest.raises(ValueError) as e:
        s.release(2)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        s.release(2 ** 40)


def test_semaphore_release_wakes_threads():
    s = Semaphore(SharedBuffer(8), 0, 0)
    got = []
    threads = [threading.Thread(target=lambda: got.append(s.acquire(timeout=10))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert got == []
    s.release(3)
    for t in threads:
        t.join(10)
    assert got == [True] * 3
    assert s.value == 0


def test_semaphore_producer_consumer_across_processes(fork):
    buf = SharedBuffer(16)
    items = Semaphore(buf, 0, 0)
    consumed = Int32Array(buf, 8, 1)
    n = 2000

    def consumer():
        for _ in range(n):
            if not items.acquire(timeout=20):
                return 1
            Atomics.add(consumed, 0, 1)

    proc = fork(consumer)
    for _ in range(n):
        items.release()
    assert proc.join() == 0
    assert consumed[0] == n and items.value == 0


# ---- Barrier ------------------------------------------------------------------------------------

def test_barrier_bad_inputs():
    buf = SharedBuffer(32)
    for parties in (0, -1, 1.5, 1 << 16, None):
        with pytest.raises(ValueError):
            Barrier(buf, 0, parties)
    Barrier(buf, 0, 3)
    Barrier(buf, 0, 3)  # attach
    with pytest.raises(ValueError) as e:
        Barrier(buf, 0, 4)
    assert "\n" not in str(e.value)


def test_barrier_one_party():
    b = Barrier(SharedBuffer(12), 0, 1)
    assert [b.wait(0) for _ in range(3)] == [0, 0, 0]


def test_barrier_threads_many_rounds():
    b = Barrier(SharedBuffer(12), 0, 3)
    seen = []
    lock = threading.Lock()

    def party():
        for r in range(50):
            index = b.wait(10)
            with lock:
                seen.append((r, index))

    threads = [threading.Thread(target=party) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 150
    for r in range(50):
        assert sorted(i for rr, i in seen if rr == r) == [0, 1, 2]


def test_barrier_across_processes(fork):
    buf = SharedBuffer(16)
    b = Barrier(buf, 0, 3)
    stage = Int32Array(buf, 12, 1)
    rounds = 200

    def party():
        for r in range(rounds):
            if Atomics.load(stage, 0) != r:
                return 1  # passed the barrier before the others reached it
            b.wait(20)
            if b.wait(20) == 2:  # one party advances the round
                Atomics.add(stage, 0, 1)
            b.wait(20)

    procs = [fork(party), fork(party)]
    assert party() is None
    for proc in procs:
        assert proc.join() == 0
    assert stage[0] == rounds


def test_barrier_timeout_breaks_it():
    b = Barrier(SharedBuffer(12), 0, 3)
    errors = []

    def other():
        try:
            b.wait(10)
        except threading.BrokenBarrierError:
            errors.append("broken")

    t = threading.Thread(target=other)
    t.start()
    start = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.1)
    assert 0.1 <= time.monotonic() - start < 1.5
    t.join(10)
    assert errors == ["broken"]
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(1)


def test_barrier_timeout_across_processes(fork):
    buf = SharedBuffer(12)
    b = Barrier(buf, 0, 3)

    def child():
        try:
            b.wait(20)
        except threading.BrokenBarrierError:
            return 0
        return 1

    proc = fork(child)
    time.sleep(0.05)
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.1)
    assert proc.join() == 0


def test_barrier_bad_timeout_does_not_count_as_arrival():
    b = Barrier(SharedBuffer(12), 0, 2)
    with pytest.raises(TypeError):
        b.wait("1")
    assert not b.broken
    # still needs two parties: one alone times out
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.05)


def test_barrier_abort_and_raising_handler_break_it():
    b = Barrier(SharedBuffer(12), 0, 2)
    old = signal.signal(signal.SIGUSR1, lambda *a: 1 / 0)
    timer = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(ZeroDivisionError):
            b.wait(10)
    finally:
        timer.join(10)
        signal.signal(signal.SIGUSR1, old)
    assert b.broken  # the party left mid-round: nobody may pass on its arrival
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(1)
    other = Barrier(SharedBuffer(12), 0, 3)
    t = threading.Timer(0.05, other.abort)
    t.start()
    with pytest.raises(threading.BrokenBarrierError):
        other.wait(10)
    t.join(10)



# ---- threading's signatures: primitives that allocate their own memory --------------------------

def test_own_memory_signatures():
    m = Mutex()
    assert isinstance(m.buffer, SharedBuffer) and m.byte_offset == 0 and not m.locked()
    assert Semaphore().value == 1
    assert Semaphore(3).value == 3
    assert Semaphore(value=0).value == 0
    with pytest.raises(ValueError):
        Semaphore(-1)
    with pytest.raises(TypeError):
        Semaphore("1")
    b = Barrier(2, None, 5.0)
    assert (b.parties, b.action, b.timeout) == (2, None, 5.0)
    assert Barrier(1).wait() == 0
    with pytest.raises(ValueError):
        Barrier(0)
    with pytest.raises(TypeError):
        Barrier(2, action="not callable")
    with pytest.raises(TypeError):
        Barrier(2, timeout="soon")
    c = Condition()
    assert isinstance(c.mutex, Mutex)
    assert Condition(m).mutex is m and Condition(lock=m).mutex is m
    with pytest.raises(TypeError):
        Condition(threading.Lock())


def test_own_memory_shared_with_forks(fork):
    m, s, b = Mutex(), Semaphore(0), Barrier(2)
    c = Condition()
    flag = Int32Array(1)

    def child():
        assert m.acquire(blocking=False) is False  # the parent holds it
        s.release()
        assert b.wait(timeout=20) in (0, 1)
        with c:
            while flag[0] == 0:
                c.wait(20)

    m.acquire()
    proc = fork(child)
    assert s.acquire(timeout=20)
    assert b.wait(timeout=20) in (0, 1)
    with c:
        flag[0] = 1
        c.notify_all()
    m.release()
    assert proc.join() == 0


def test_barrier_action_runs_once_before_release():
    rounds, seen = [], []
    b = Barrier(3, action=lambda: rounds.append(len(rounds)))

    def party():
        for r in range(50):
            b.wait(timeout=20)
            seen.append(len(rounds) > r)  # the action of round r ran before anyone left it

    threads = [threading.Thread(target=party) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert rounds == list(range(50))
    assert len(seen) == 150 and all(seen)


def test_barrier_action_that_raises_breaks_it():
    def boom():
        raise KeyError("action")

    b = Barrier(2, action=boom)
    errors = []

    def party():
        try:
            b.wait(timeout=20)
        except threading.BrokenBarrierError:
            errors.append("broken")
        except KeyError:
            errors.append("action")

    t = threading.Thread(target=party)
    t.start()
    party()
    t.join(30)
    assert sorted(errors) == ["action", "broken"]
    assert b.broken


# ---- placements ---------------------------------------------------------------------------------

def test_overlapping_placements_refused():
    buf = SharedBuffer(64)
    m = Mutex(buf, 8)
    for cls, offset in ((Mutex, 8), (Semaphore, 4), (Barrier, 0), (Condition, 8)):
        with pytest.raises(ValueError) as e:
            if cls is Barrier:
                Barrier(buf, offset, 2)
            elif cls is Condition:
                Condition(buf, offset, Mutex())
            else:
                cls(buf, offset)
        assert "overlaps the Mutex at bytes 8..11" in str(e.value) and "\n" not in str(e.value)
    neighbours = Semaphore(buf, 0, 1), Mutex(buf, 12)  # adjacent bytes are fine
    del m, e  # (the exception's traceback holds the Mutex too)
    assert Mutex(buf, 8).byte_offset == 8  # freed with the object that held them
    assert neighbours


def test_overlap_seen_through_a_second_mapping(shm_name):
    buf = SharedBuffer(16, name=shm_name)
    other = SharedBuffer.open(shm_name)
    m = Mutex(buf, 0)
    with pytest.raises(ValueError, match="bytes 0..3"):
        Mutex(other, 0)
    del m


def test_other_process_attaches_by_placement(shm_name):
    buf = SharedBuffer(16, name=shm_name)
    m = Mutex(buf, 0)
    s = Semaphore(buf, 8, 5)
    m.acquire()
    code = ("import sys\nfrom pyclusterc import Mutex, Semaphore, SharedBuffer\n"
            f"buf = SharedBuffer.open({shm_name!r})\n"
            "ok = Mutex(buf, 0).acquire(blocking=False) is False and Semaphore(buf, 8).value == 5\n"
            "sys.exit(0 if ok else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    m.release()
    assert s.value == 5


def test_primitives_refuse_plain_pickle():
    for obj in (Mutex(), Semaphore(), Barrier(2), Condition()):
        with pytest.raises(TypeError, match="only be sent through pyclusterc"):
            pickle.dumps(obj)


def _worker_uses_primitives():
    from pyclusterc.workers import parent_port, worker_data
    m, s, c, b = worker_data
    busy = m.acquire(blocking=False) is False
    s.release()
    assert m.acquire(timeout=20)
    m.release()
    b.wait(timeout=20)
    parent_port.post_message((busy, c.mutex is m, b.parties))


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_primitives_sent_to_a_worker(backend):
    from pyclusterc.workers import Worker
    m, s, b = Mutex(), Semaphore(0), Barrier(2)
    c = Condition(m)
    m.acquire()
    w = Worker(_worker_uses_primitives, worker_data=(m, s, c, b), backend=backend)
    try:
        assert s.acquire(timeout=20)
        m.release()
        b.wait(timeout=20)
        assert w.receive(timeout=20) == (True, True, 2)
        assert w.join(20) == 0
    finally:
        w.terminate()


# ---- robust Mutex ---------------------------------------------------------------------------------

def test_owner_died_next_acquirer_recovers(fork):
    m = Mutex()
    assert fork(lambda: 0 if m.acquire() else 1).join() == 0  # exits holding it
    assert m.locked()
    with pytest.raises(OwnerDied) as e:
        m.acquire(timeout=5)
    assert "previous owner died" in str(e.value) and e.value.mutex is m
    assert m.locked()  # held by us now
    m.release()
    assert m.acquire(timeout=0) is True
    m.release()


def test_owner_died_with_statement_releases(fork):
    m = Mutex()
    assert fork(lambda: 0 if m.acquire() else 1).join() == 0
    with pytest.raises(OwnerDied):
        with m:
            pytest.fail("the block must not run")
    assert not m.locked()
    with m:
        assert m.locked()


def test_owner_killed_while_others_wait(fork):
    m = Mutex()
    flag = Int32Array(1)

    def holder():
        m.acquire()
        Atomics.store(flag, 0, 1)
        Atomics.notify(flag, 0)
        time.sleep(60)

    proc = fork(holder)
    while Atomics.load(flag, 0) == 0:
        Atomics.wait(flag, 0, 0, 20)
    assert m.acquire(timeout=0.05) is False  # alive: really held
    outcome = []

    def waiter():
        try:
            outcome.append(m.acquire(timeout=20))
        except OwnerDied:
            outcome.append("owner died")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    start = time.monotonic()
    proc.kill()
    t.join(20)
    assert outcome == ["owner died"]
    assert time.monotonic() - start < 3
    m.release()


def test_owner_died_nonblocking(fork):
    m = Mutex()
    assert fork(lambda: 0 if m.acquire() else 1).join() == 0
    with pytest.raises(OwnerDied):
        m.acquire(blocking=False)
    m.release()


# ---- CPython gh-77894: no buffer export held on a memoryview ---------------------------------------

GH_77894 = """
import gc, io, pickle
from pyclusterc import Int32Array, Mutex
class Box:
    pass
def make():
    box = Box()
    box.ta = Int32Array(4)
    box.mutex = Mutex()
    box.me = box
    try:
        pickle._Pickler(io.BytesIO(), 5).dump(box)   # pure-Python pickler, as cloudpickle
    except TypeError as e:
        box.error = e  # traceback -> frames -> the reduce results: a reference cycle
for _ in range(20):
    make()
gc.collect()
print("collected")
"""


def test_typed_array_in_failed_pickle_cycle_does_not_crash():
    # Before: "Exception ignored in tp_clear of memoryview" then SIGSEGV (exit -11) on 3.10-3.12.
    out = subprocess.run([sys.executable, "-c", GH_77894], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "collected"
    assert "tp_clear" not in out.stderr
