"""Atomics, translated from test262's built-ins/Atomics (checked against Node 20):
allowed and refused arrays, indices, return values, wrap-around, wait/notify."""
import asyncio
import random
import signal
import threading
import time

import pytest

from conftest import poll, wait_for_waiters, waiters
from pyclusterc import (Atomics, BigInt64Array, BigUint64Array, Float32Array, Float64Array,
                        Int8Array, Int16Array, Int32Array, SharedBuffer, Uint8Array, Uint16Array,
                        Uint32Array)

# An exception in a helper thread (a waiter, wait_async's thread) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

# class -> (bits, signed)
INT_ARRAYS = {Int8Array: (8, True), Uint8Array: (8, False), Int16Array: (16, True),
              Uint16Array: (16, False), Int32Array: (32, True), Uint32Array: (32, False),
              BigInt64Array: (64, True), BigUint64Array: (64, False)}
FLOAT_ARRAYS = [Float32Array, Float64Array]
NOT_WAITABLE = [c for c in list(INT_ARRAYS) + FLOAT_ARRAYS if c not in (Int32Array, BigInt64Array)]
WAITABLE = [Int32Array, BigInt64Array]

RMW = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "and_": lambda a, b: a & b,
       "or_": lambda a, b: a | b, "xor": lambda a, b: a ^ b, "exchange": lambda a, b: b}


def wrap(value, bits, signed):
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


def call_all(op):
    """Every op as fn(ta, index, value) -> result, for the refused-input tests."""
    if op == "compare_exchange":
        return lambda ta, i, v: Atomics.compare_exchange(ta, i, v, v)
    if op == "load":
        return lambda ta, i, v: Atomics.load(ta, i)
    return lambda ta, i, v: getattr(Atomics, op)(ta, i, v)


ALL_OPS = list(RMW) + ["compare_exchange", "load", "store"]


# ---- every op on every integer array -------------------------------------------------

@pytest.mark.parametrize("form", ["namespace", "method"])
@pytest.mark.parametrize("cls", list(INT_ARRAYS))
def test_ops_match_a_model(cls, form):
    """Random ops with values far outside the element range: results, old values and
    the stored cell all follow JS (values reduced modulo 2**bits, arithmetic wraps)."""
    bits, signed = INT_ARRAYS[cls]
    ta = cls(4)
    model = [0] * 4
    rng = random.Random(bits * 2 + signed)
    limit = 1 << (bits + 8)
    for _ in range(3000):
        i = rng.randrange(4)
        v = rng.choice([rng.randrange(-limit, limit), rng.randrange(-3, 4),
                        (1 << bits) - 1, 1 << (bits - 1), -(1 << (bits - 1)) - 1])
        op = rng.choice(ALL_OPS)
        if form == "namespace":
            call = lambda name, *args: getattr(Atomics, name)(ta, *args)  # noqa: E731
        else:
            call = lambda name, *args: getattr(ta, name)(*args)  # noqa: E731
        old = model[i]
        if op in RMW:
            assert call(op, i, v) == old, (op, i, v)
            model[i] = wrap(RMW[op](old, v), bits, signed)
        elif op == "store":
            assert call("store", i, v) == v
            model[i] = wrap(v, bits, signed)
        elif op == "load":
            assert call("load", i) == old
        else:
            expected = rng.choice([old, old + (1 << bits), v])
            assert call("compare_exchange", i, expected, v) == old
            if wrap(expected, bits, signed) == old:
                model[i] = wrap(v, bits, signed)
        assert ta[i] == model[i]
    assert list(ta) == model


@pytest.mark.parametrize("cls", list(INT_ARRAYS))
def test_wrap_around_at_each_width(cls):
    bits, signed = INT_ARRAYS[cls]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ta = cls(2)
    assert Atomics.store(ta, 0, hi) == hi
    assert Atomics.add(ta, 0, 1) == hi
    assert Atomics.load(ta, 0) == lo
    assert Atomics.sub(ta, 0, 1) == lo
    assert Atomics.load(ta, 0) == hi
    # inputs are reduced modulo 2**bits before the op
    Atomics.store(ta, 1, 5)
    assert Atomics.add(ta, 1, (1 << bits) + 1) == 5
    assert Atomics.load(ta, 1) == 6
    assert Atomics.sub(ta, 1, -(1 << bits) * 3 + 2) == 6
    assert Atomics.load(ta, 1) == 4
    assert Atomics.exchange(ta, 1, -1) == 4
    assert Atomics.load(ta, 1) == (-1 if signed else (1 << bits) - 1)


@pytest.mark.parametrize("cls", list(INT_ARRAYS))
def test_store_returns_its_input(cls):
    bits, signed = INT_ARRAYS[cls]
    ta = cls(1)
    for value in (1 << 70, -(1 << 70) - 3, -1, 1 << bits, 7):
        assert Atomics.store(ta, 0, value) == value
        assert ta.store(0, value) == value
        assert Atomics.load(ta, 0) == wrap(value, bits, signed)


@pytest.mark.parametrize("cls", list(INT_ARRAYS))
def test_compare_exchange_returns_old_value(cls):
    bits, signed = INT_ARRAYS[cls]
    ta = cls(1)
    Atomics.store(ta, 0, 3)
    assert Atomics.compare_exchange(ta, 0, 4, 9) == 3  # no swap
    assert Atomics.load(ta, 0) == 3
    assert Atomics.compare_exchange(ta, 0, 3, 9) == 3  # swap
    assert Atomics.load(ta, 0) == 9
    # expected is reduced like the value (Node: compareExchange(b, 0, 2n**64n + 9n, 1n) swaps)
    assert Atomics.compare_exchange(ta, 0, 9 + (1 << bits), 1) == 9
    assert Atomics.load(ta, 0) == 1
    assert ta.compare_exchange(0, 1 - (1 << bits), (1 << bits) + 2) == 1
    assert ta.load(0) == 2


# ---- refused arrays, indices, values --------------------------------------------------

@pytest.mark.parametrize("op", ALL_OPS + ["wait", "notify"])
@pytest.mark.parametrize("cls", FLOAT_ARRAYS)
def test_float_arrays_are_type_error(cls, op):
    ta = cls(2)
    fn = {"wait": lambda t, i, v: Atomics.wait(t, i, v, 0),
          "notify": lambda t, i, v: Atomics.notify(t, i)}.get(op) or call_all(op)
    with pytest.raises(TypeError) as e:
        fn(ta, 0, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("op", ALL_OPS + ["wait", "notify"])
@pytest.mark.parametrize("obj", [[0, 0], bytearray(8), memoryview(bytearray(8)), None, 3])
def test_non_typed_arrays_are_type_error(obj, op):
    fn = {"wait": lambda t, i, v: Atomics.wait(t, i, v, 0),
          "notify": lambda t, i, v: Atomics.notify(t, i)}.get(op) or call_all(op)
    with pytest.raises(TypeError):
        fn(obj, 0, 0)


def test_buffer_itself_is_type_error():
    with pytest.raises(TypeError):
        Atomics.add(SharedBuffer(8), 0, 1)


@pytest.mark.parametrize("cls,op", [(cls, op) for cls in INT_ARRAYS for op in ALL_OPS] +
                         [(cls, op) for cls in WAITABLE for op in ("wait", "notify")])
def test_bad_index(cls, op):
    fn = {"wait": lambda t, i, v: Atomics.wait(t, i, v, 0),
          "notify": lambda t, i, v: Atomics.notify(t, i)}.get(op) or call_all(op)
    ta = cls(4)
    for index in (-1, -4, 4, 5, 1 << 70, -(1 << 70)):
        with pytest.raises(IndexError) as e:
            fn(ta, index, 0)
        assert "\n" not in str(e.value)
    for index in (1.0, 0.5, "0", None, [0]):
        with pytest.raises(TypeError):
            fn(ta, index, 0)
    # the method forms refuse the same indices
    if op not in ("wait", "notify"):
        method = {"compare_exchange": lambda i: ta.compare_exchange(i, 0, 0),
                  "load": lambda i: ta.load(i)}.get(op) or (lambda i: getattr(ta, op)(i, 0))
        for index in (-1, 4, 1 << 70):
            with pytest.raises(IndexError):
                method(index)
        with pytest.raises(TypeError):
            method(1.0)
    assert list(ta) == [0, 0, 0, 0]


def test_index_accepts_int_like():
    import numpy as np
    ta = Int32Array(4)
    assert Atomics.add(ta, np.int64(2), 5) == 0
    assert ta.load(np.uint8(2)) == 5
    assert Atomics.load(ta, True) == 0  # bool is an int in Python


def test_zero_length_array_has_no_valid_index():
    ta = Int32Array(0)
    with pytest.raises(IndexError):
        Atomics.load(ta, 0)
    with pytest.raises(IndexError):
        ta.add(0, 1)


@pytest.mark.parametrize("op", [op for op in ALL_OPS if op != "load"])
@pytest.mark.parametrize("cls", list(INT_ARRAYS))
def test_non_integer_values_are_type_error(cls, op):
    ta = cls(2)
    for value in (1.5, 1.0, "1", None, b"\x01", [1]):
        with pytest.raises(TypeError) as e:
            call_all(op)(ta, 0, value)
        assert "\n" not in str(e.value)
        method = (lambda v: ta.compare_exchange(0, v, v)) if op == "compare_exchange" \
            else (lambda v: getattr(ta, op)(0, v))
        with pytest.raises(TypeError):
            method(value)
    with pytest.raises(TypeError):
        Atomics.compare_exchange(ta, 0, 0, 1.5)
    with pytest.raises(TypeError):
        Atomics.compare_exchange(ta, 0, 1.5, 0)
    assert list(ta) == [0, 0]


def test_is_lock_free():
    for size in (1, 2, 4, 8):
        assert Atomics.is_lock_free(size) is True
    for size in (0, 3, 5, 16, -1):
        assert Atomics.is_lock_free(size) is False
    with pytest.raises(TypeError):
        Atomics.is_lock_free("4")
    with pytest.raises(TypeError):
        Atomics.is_lock_free(4.0)


def test_pause():
    assert Atomics.pause() is None
    assert Atomics.pause(100) is None
    assert Atomics.pause(0) is None
    with pytest.raises(TypeError):
        Atomics.pause(1.5)


def test_atomics_is_not_instantiable():
    with pytest.raises(TypeError):
        Atomics()


# ---- wait / notify: argument checks and timeouts ---------------------------------------

@pytest.mark.parametrize("cls", NOT_WAITABLE)
def test_wait_and_notify_refuse_other_arrays(cls):
    ta = cls(2)
    with pytest.raises(TypeError) as e:
        Atomics.wait(ta, 0, 0, 0)
    assert "Int32Array" in str(e.value)
    with pytest.raises(TypeError):
        Atomics.notify(ta, 0)
    with pytest.raises(TypeError):
        asyncio.run(Atomics.wait_async(ta, 0, 0, 0))


@pytest.mark.parametrize("cls", WAITABLE)
@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, float("-inf")])
def test_wait_zero_or_negative_timeout(cls, timeout):
    ta = cls(2)
    start = time.monotonic()
    assert Atomics.wait(ta, 0, 0, timeout) == "timed-out"
    assert time.monotonic() - start < 0.5
    assert waiters(ta, 0) == 0


@pytest.mark.parametrize("cls", WAITABLE)
def test_wait_small_timeout_elapses(cls):
    ta = cls(2)
    for timeout in (0.001, 0.05, 0.2):
        start = time.monotonic()
        assert Atomics.wait(ta, 1, 0, timeout) == "timed-out"
        elapsed = time.monotonic() - start
        assert timeout <= elapsed < timeout + 1.0, (timeout, elapsed)
    assert waiters(ta, 1) == 0


@pytest.mark.parametrize("cls", WAITABLE)
def test_wait_not_equal(cls):
    bits = INT_ARRAYS[cls][0]
    ta = cls(2)
    Atomics.store(ta, 0, 5)
    assert Atomics.wait(ta, 0, 4) == "not-equal"
    assert Atomics.wait(ta, 0, 4, None) == "not-equal"
    # the value is reduced like any Atomics value: 5 + 2**bits equals 5
    assert Atomics.wait(ta, 0, 5 + (1 << bits), 0) == "timed-out"
    assert waiters(ta, 0) == 0


def test_wait_bad_timeout_and_value_types():
    ta = Int32Array(1)
    for timeout in ("1", [1], b"", 1j):
        with pytest.raises(TypeError):
            Atomics.wait(ta, 0, 0, timeout)
    for value in (0.0, "0", None):
        with pytest.raises(TypeError):
            Atomics.wait(ta, 0, value, 0)
    assert waiters(ta, 0) == 0


def test_wait_huge_timeout_is_forever():
    ta = Int32Array(1)
    results = []
    for timeout in (float("inf"), float("nan"), 1e300, 10 ** 400):
        t = threading.Thread(target=lambda: results.append(Atomics.wait(ta, 0, 0, timeout)))
        t.start()
        wait_for_waiters(ta, 0, 1)
        assert Atomics.notify(ta, 0) == 1
        t.join(10)
    assert results == ["ok"] * 4


# ---- wait / notify across threads ----------------------------------------------------

def start_waiters(ta, index, n, results, timeout=None, value=0):
    """n threads waiting on ta[index], registered in order; results get (k, result)."""
    threads = []
    for k in range(n):
        t = threading.Thread(target=lambda k=k: results.append((k, Atomics.wait(ta, index, value, timeout))))
        t.start()
        threads.append(t)
        wait_for_waiters(ta, index, len(threads))
    return threads


def join_all(threads):
    for t in threads:
        t.join(10)
        assert not t.is_alive()


@pytest.mark.parametrize("cls", WAITABLE)
def test_notify_all_returns_count(cls):
    ta = cls(4)
    results = []
    threads = start_waiters(ta, 1, 3, results)
    assert Atomics.notify(ta, 0) == 0  # another cell
    assert Atomics.notify(ta, 1) == 3
    join_all(threads)
    assert sorted(results) == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert Atomics.notify(ta, 1) == 0


@pytest.mark.parametrize("cls", WAITABLE)
def test_notify_counts_one_zero_more_and_fifo(cls):
    ta = cls(2)
    results = []
    threads = start_waiters(ta, 0, 4, results)
    assert Atomics.notify(ta, 0, 0) == 0
    assert Atomics.notify(ta, 0, -5) == 0
    assert waiters(ta, 0) == 4
    assert Atomics.notify(ta, 0, 1) == 1
    poll(lambda: len(results) == 1)
    assert Atomics.notify(ta, 0, 1) == 1
    poll(lambda: len(results) == 2)
    assert [k for k, _ in results] == [0, 1]  # oldest first
    assert Atomics.notify(ta, 0, 10) == 2  # more than waiting
    assert Atomics.notify(ta, 0, 1 << 100) == 0  # any count, even past int64
    join_all(threads)
    assert sorted(r for _, r in results) == ["ok"] * 4
    assert sorted(k for k, _ in results[2:]) == [2, 3]


def test_notify_bad_count_type():
    ta = Int32Array(1)
    for count in (1.0, "1", [1]):
        with pytest.raises(TypeError):
            Atomics.notify(ta, 0, count)


def test_notify_names_the_cell_not_the_view():
    """Two arrays over the same bytes reach the same waiters; another buffer doesn't."""
    buf = SharedBuffer(32)
    a = Int32Array(buf)
    b = Int32Array(buf, 8)
    results = []
    threads = start_waiters(a, 3, 1, results)
    assert Atomics.notify(Int32Array(4), 3) == 0  # same offset, other buffer
    assert Atomics.notify(BigInt64Array(buf), 1) == 0  # bytes 8..15: a different cell
    assert Atomics.notify(b, 1) == 1
    join_all(threads)
    assert results == [(0, "ok")]


@pytest.mark.parametrize("cls", WAITABLE)
def test_no_spurious_wakeup(cls):
    """Changing the value without notify does not end a wait."""
    ta = cls(1)
    results = []
    start = time.monotonic()
    threads = start_waiters(ta, 0, 1, results, timeout=0.4)
    Atomics.store(ta, 0, 1)
    Atomics.store(ta, 0, 0)
    Atomics.add(ta, 0, 7)
    join_all(threads)
    assert results == [(0, "timed-out")]
    assert time.monotonic() - start >= 0.4


def test_bigint64_high_half_only():
    ta = BigInt64Array(1)
    # the comparison covers all 64 bits
    Atomics.store(ta, 0, 5 | (1 << 40))
    assert Atomics.wait(ta, 0, 5, 0) == "not-equal"
    assert Atomics.wait(ta, 0, 5 | (1 << 40), 0) == "timed-out"
    Atomics.store(ta, 0, 0)
    # a change in the high half, then notify: the waiter wakes
    results = []
    threads = start_waiters(ta, 0, 1, results)
    Atomics.store(ta, 0, 1 << 32)
    assert Atomics.notify(ta, 0) == 1
    join_all(threads)
    assert results == [(0, "ok")]
    # a waiter registering after the high half changed sees not-equal
    assert Atomics.wait(ta, 0, 0, 5) == "not-equal"


def test_bigint64_high_half_change_without_notify_does_not_wake():
    ta = BigInt64Array(1)
    results = []
    threads = start_waiters(ta, 0, 1, results, timeout=0.3)
    Atomics.store(ta, 0, 1 << 32)
    join_all(threads)
    assert results == [(0, "timed-out")]


def test_many_waiters_on_many_cells():
    ta = Int32Array(8)
    results = []
    threads = []
    for i in range(8):
        threads += start_waiters(ta, i, 2, results)
    for i in range(8):
        assert Atomics.notify(ta, i) == 2
    join_all(threads)
    assert len(results) == 16


# ---- across processes -----------------------------------------------------------------

@pytest.mark.parametrize("cls", WAITABLE)
def test_wake_in_another_process(cls, fork):
    ta = cls(2)

    def child():
        result = Atomics.wait(ta, 1, 0, 20)
        return 0 if result == "ok" and Atomics.load(ta, 0) == 42 else 1

    proc = fork(child)
    wait_for_waiters(ta, 1, 1)
    Atomics.store(ta, 0, 42)
    assert Atomics.notify(ta, 1) == 1
    assert proc.join() == 0


@pytest.mark.parametrize("cls", WAITABLE)
def test_process_wakes_this_one(cls, fork):
    ta = cls(2)

    def child():
        poll(lambda: waiters(ta, 0) == 1)
        Atomics.store(ta, 1, 1 << 33 if cls is BigInt64Array else 9)
        return 0 if Atomics.notify(ta, 0) == 1 else 1

    proc = fork(child)
    assert Atomics.wait(ta, 0, 0, 20) == "ok"
    assert proc.join() == 0
    assert Atomics.load(ta, 1) in (1 << 33, 9)


def test_notify_count_across_processes(fork):
    ta = Int32Array(2)

    def child():
        return {"ok": 0, "timed-out": 2}.get(Atomics.wait(ta, 0, 0, 20), 3)

    procs = []
    for n in (1, 2):
        procs.append(fork(child))
        wait_for_waiters(ta, 0, n)
    assert Atomics.notify(ta, 0, 1) == 1
    assert procs[0].join() == 0  # FIFO across processes too
    assert waiters(ta, 0) == 1
    assert Atomics.notify(ta, 0, 5) == 1
    assert procs[1].join() == 0


def test_killed_waiter_process_frees_no_wrong_count(fork):
    """A waiter killed while waiting must not count as woken by a later notify."""
    ta = Int32Array(1)
    proc = fork(lambda: Atomics.wait(ta, 0, 0, 30) and 0)
    wait_for_waiters(ta, 0, 1)
    proc.kill()
    assert Atomics.notify(ta, 0) == 0


# ---- signals during a wait (PEP 475) ----------------------------------------------------

@pytest.fixture
def sigusr1():
    """Installs a SIGUSR1 handler (given per test) and a sender thread aimed at the
    main thread; restores the old handler at the end."""
    old = signal.getsignal(signal.SIGUSR1)
    main = threading.main_thread().ident
    stop = threading.Event()
    senders = []

    def install(handler, times, interval):
        signal.signal(signal.SIGUSR1, handler)

        def send():
            for _ in range(times):
                if stop.wait(interval):
                    return
                signal.pthread_kill(main, signal.SIGUSR1)

        t = threading.Thread(target=send, daemon=True)
        senders.append(t)
        t.start()
        return t

    yield install
    stop.set()
    for t in senders:
        t.join(10)
    signal.signal(signal.SIGUSR1, old)


@pytest.mark.parametrize("cls", WAITABLE)
def test_signal_handler_runs_and_wait_resumes(cls, sigusr1):
    ta = cls(1)
    count = []
    sender = sigusr1(lambda *a: count.append(1), times=5, interval=0.05)
    start = time.monotonic()
    assert Atomics.wait(ta, 0, 0, 0.6) == "timed-out"
    elapsed = time.monotonic() - start
    sender.join(5)
    assert len(count) == 5
    assert 0.6 <= elapsed < 1.5, elapsed
    assert waiters(ta, 0) == 0


def test_signal_handler_then_notify_is_ok(sigusr1):
    ta = Int32Array(1)
    count = []
    sigusr1(lambda *a: count.append(1), times=3, interval=0.03)

    def later():
        poll(lambda: len(count) == 3)
        Atomics.notify(ta, 0)

    t = threading.Thread(target=later)
    t.start()
    assert Atomics.wait(ta, 0, 0, 20) == "ok"
    t.join(10)


class Interrupted(Exception):
    pass


def raise_interrupted(*args):
    raise Interrupted


@pytest.mark.parametrize("cls", WAITABLE)
@pytest.mark.parametrize("timeout", [None, 10])
def test_signal_handler_that_raises_ends_wait_and_frees_slot(cls, timeout, sigusr1):
    ta = cls(1)
    sigusr1(raise_interrupted, times=1, interval=0.1)
    start = time.monotonic()
    with pytest.raises(Interrupted):
        Atomics.wait(ta, 0, 0, timeout)
    assert time.monotonic() - start < 5
    assert waiters(ta, 0) == 0
    assert Atomics.notify(ta, 0) == 0


# ---- wait_async --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", WAITABLE)
def test_wait_async_resolves_on_notify(cls):
    ta = cls(1)

    async def main():
        task = asyncio.create_task(Atomics.wait_async(ta, 0, 0))
        ticks = 0
        while waiters(ta, 0) == 0:  # the loop keeps running while the task waits
            ticks += 1
            await asyncio.sleep(0.001)
        assert not task.done()
        assert Atomics.notify(ta, 0) == 1
        return await asyncio.wait_for(task, 10), ticks

    result, ticks = asyncio.run(main())
    assert result == "ok" and ticks >= 0


def test_wait_async_notify_from_another_process(fork):
    ta = Int32Array(1)

    def child():
        poll(lambda: waiters(ta, 0) == 1)
        return 0 if Atomics.notify(ta, 0) == 1 else 1

    async def main():
        return await asyncio.wait_for(Atomics.wait_async(ta, 0, 0), 20)

    proc = fork(child)
    assert asyncio.run(main()) == "ok"
    assert proc.join() == 0


def test_wait_async_timed_out_and_not_equal():
    ta = Int32Array(1)

    async def main():
        start = time.monotonic()
        r1 = await Atomics.wait_async(ta, 0, 0, 0.1)
        elapsed = time.monotonic() - start
        r2 = await Atomics.wait_async(ta, 0, 0, 0)
        r3 = await Atomics.wait_async(ta, 0, 1, None)
        r4 = await Atomics.wait_async(ta, 0, 0, -3)
        return r1, elapsed, r2, r3, r4

    r1, elapsed, r2, r3, r4 = asyncio.run(main())
    assert (r1, r2, r3, r4) == ("timed-out", "timed-out", "not-equal", "timed-out")
    assert 0.1 <= elapsed < 1.5
    assert waiters(ta, 0) == 0


def test_wait_async_many_concurrent():
    ta = Int32Array(1)

    async def main():
        tasks = [asyncio.create_task(Atomics.wait_async(ta, 0, 0, 20)) for _ in range(5)]
        while waiters(ta, 0) < 5:
            await asyncio.sleep(0.001)
        assert Atomics.notify(ta, 0, 2) == 2
        assert Atomics.notify(ta, 0) == 3
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["ok"] * 5


def test_wait_async_cancellation_frees_slot():
    ta = Int32Array(1)

    async def main():
        task = asyncio.create_task(Atomics.wait_async(ta, 0, 0))
        while waiters(ta, 0) == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the blocked thread is woken and releases its slot
        for _ in range(5000):
            if waiters(ta, 0) == 0:
                break
            await asyncio.sleep(0.001)
        return waiters(ta, 0), Atomics.notify(ta, 0)

    assert asyncio.run(main()) == (0, 0)


def test_wait_async_timeout_via_wait_for_frees_slot():
    ta = Int32Array(1)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(Atomics.wait_async(ta, 0, 0), 0.05)
        for _ in range(5000):
            if waiters(ta, 0) == 0:
                break
            await asyncio.sleep(0.001)
        return Atomics.notify(ta, 0)

    assert asyncio.run(main()) == 0


# ---- stress -----------------------------------------------------------------------------

STRESS_ADDS = 1_000_000


@pytest.mark.parametrize("cls", [Int32Array, BigInt64Array])
def test_two_processes_million_adds_exact(cls, fork):
    ta = cls(2)
    start_line = Int32Array(1)

    def child():
        # start together so the adds really contend
        Atomics.add(start_line, 0, 1)
        while Atomics.load(start_line, 0) < 2:
            pass
        add = ta.add
        for _ in range(STRESS_ADDS):
            add(0, 1)

    procs = [fork(child), fork(child)]
    for proc in procs:
        assert proc.join(timeout=60) == 0
    assert Atomics.load(ta, 0) == 2 * STRESS_ADDS
    assert ta[1] == 0


def test_namespace_adds_across_processes_exact(fork):
    ta = Uint16Array(1)  # wraps: 2 * 100000 mod 65536

    def child():
        for _ in range(100_000):
            Atomics.add(ta, 0, 1)

    procs = [fork(child), fork(child)]
    for proc in procs:
        assert proc.join(timeout=60) == 0
    assert Atomics.load(ta, 0) == (2 * 100_000) % 65536


def test_ping_pong_across_processes(fork):
    """Strict alternation through wait/notify: no lost wake-ups over many rounds."""
    ta = Int32Array(1)
    rounds = 2000

    def child():
        for k in range(rounds):
            while Atomics.load(ta, 0) != 2 * k + 1:
                Atomics.wait(ta, 0, 2 * k, 5)
            Atomics.store(ta, 0, 2 * k + 2)
            Atomics.notify(ta, 0)

    proc = fork(child)
    for k in range(rounds):
        Atomics.store(ta, 0, 2 * k + 1)
        Atomics.notify(ta, 0)
        while Atomics.load(ta, 0) != 2 * k + 2:
            assert Atomics.wait(ta, 0, 2 * k + 1, 5) in ("ok", "not-equal")
    assert proc.join() == 0
