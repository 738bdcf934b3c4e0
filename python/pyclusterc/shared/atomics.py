"""``Atomics``: the ECMAScript Atomics operations, with Python names.

Each operation checks that it got an integer typed array and hands over to that
array's method form (``ta.add(i, v)`` etc.), which is the fast path.
"""
import numbers
import operator
import threading

from time import monotonic_ns as _monotonic_ns

from .._lowlevel.wakeup import call_in_loop
from .._lowlevel.native import EAGAIN, EINTR, call_restarting, ffi, lib, os_error, timeout_ns
from .buffer import (BigInt64Array, Float32Array, Float64Array, Int32Array, TypedArray,
                     IntegerArray)

__all__ = ["Atomics"]

# Most polls of a waiter's slot before it sleeps in the kernel; the C core spins
# less, or not at all, when spinning does not pay (one usable CPU, or recent waits on
# the cell that the spin missed). A futex wake-up costs tens of microseconds on a VM;
# a notifier on another free CPU usually comes sooner.
WAIT_SPIN = 2000

_WAITABLE = (Int32Array, BigInt64Array)
_WAITABLE_EXACT = frozenset(_WAITABLE)
_INT64_MAX = (1 << 63) - 1


def _integer_array(ta, op):
    if isinstance(ta, IntegerArray):
        return ta
    if isinstance(ta, (Float32Array, Float64Array)):
        raise TypeError(f"Atomics.{op} does not work on {type(ta).__name__}: use an integer typed array")
    raise TypeError(f"Atomics.{op} needs an integer typed array (Int8Array … BigUint64Array), "
                    f"not {type(ta).__name__}")


def _waitable_array(ta, op):
    if isinstance(ta, _WAITABLE):
        return ta
    if isinstance(ta, TypedArray):
        raise TypeError(f"Atomics.{op} works on Int32Array and BigInt64Array only, not {type(ta).__name__}")
    raise TypeError(f"Atomics.{op} needs an Int32Array or BigInt64Array, not {type(ta).__name__}")


def _checked(ta, index, value, timeout, op):
    """Validate in test262's order: the array, the index, the value, then the
    timeout (ValidateIntegerTypedArray, ValidateAtomicAccess, ToInt32/ToBigInt64,
    ToNumber). Returns (array, element index, reduced value, timeout in ns)."""
    ta = _waitable_array(ta, op)
    i = ta._index(index)
    expected = ta._reduce(value)
    return ta, i, expected, _timeout_ns(timeout)


def _timeout_ns(timeout):
    """Seconds as int, float, or any int-like (__index__) or real number (numpy
    scalars, Fraction); None = forever. Other types raise TypeError, bool included."""
    if timeout is None or type(timeout) in (int, float):
        return timeout_ns(timeout)
    if not isinstance(timeout, bool):
        if hasattr(type(timeout), "__index__"):
            return timeout_ns(operator.index(timeout))
        if isinstance(timeout, numbers.Real):
            return timeout_ns(float(timeout))
    return timeout_ns(timeout, "Atomics.wait timeout")


def _register(ta, i, expected):
    """Check the cell and take a waiter slot: returns the slot, or None for not-equal."""
    size = ta.BYTES_PER_ELEMENT
    slot = ffi.new("int *")
    rc = lib.pc_wait_register(ta._header, ta._ptr + i * size, ta.byte_offset + i * size,
                              size, expected, slot)
    if rc == lib.PC_WAIT_NOT_EQUAL:
        return None
    if rc == EAGAIN:
        raise RuntimeError("too many waiters on one SharedBuffer (the waiter table is full)")
    return slot[0]


_RESULTS = {lib.PC_WAIT_OK: "ok", lib.PC_WAIT_NOT_EQUAL: "not-equal", lib.PC_WAIT_TIMED_OUT: "timed-out"}


# `int *` cells for pc_wait's slot out-parameter, reused (an ffi.new is a third of a
# microsecond). A pool, not one per thread: a signal handler may itself wait while
# the wait it interrupted still holds its cell.
_held_pool = []


def _wait(ta, i, expected, ns):
    """Register, block and release in one C call (pc_wait); on -EINTR (a signal: its
    handler runs on the way back to Python) resume with the time left. pc_wait
    leaves held[0] at -1 unless it returned -EINTR still holding the slot: then,
    whatever a handler raises, the finally frees it."""
    held = _held_pool.pop() if _held_pool else ffi.new("int *", -1)
    started = _monotonic_ns() if ns > 0 else 0
    try:
        rc = lib.pc_wait(ta._header, ta._ptr, ta.byte_offset, i, ta.BYTES_PER_ELEMENT, expected, ns,
                         WAIT_SPIN, held)
        if rc == EINTR:
            rc = _resume(ta._header, held, ns if ns <= 0 else max(0, ns - (_monotonic_ns() - started)))
    finally:
        _give_back(ta._header, held)
    return _finish(rc)


def _resume(header, held, left):
    slot = held[0]
    call_restarting(lambda left: lib.pc_wait_block(header, slot, left, WAIT_SPIN), left)
    held[0] = -1
    return lib.pc_wait_release(header, slot)


def _give_back(header, held):
    """Free a slot still held (an exception left the wait), and pool the cell."""
    if held[0] >= 0:
        lib.pc_wait_release(header, held[0])
        held[0] = -1
    _held_pool.append(held)


def _finish(rc):
    if rc >= 0:
        return _RESULTS[rc]
    if rc == EAGAIN:
        raise RuntimeError("too many waiters on one SharedBuffer (the waiter table is full)")
    raise os_error(rc, "Atomics.wait")


def _result(rc):
    return "ok" if rc == lib.PC_WAIT_OK else "timed-out"


class Atomics:
    """Namespace of the Atomics operations (``Atomics.add(ta, index, value)`` …)."""

    def __new__(cls, *args, **kwargs):
        raise TypeError("Atomics is a namespace, not a class to instantiate")

    @staticmethod
    def add(ta, index, value):
        return _integer_array(ta, "add").add(index, value)

    @staticmethod
    def sub(ta, index, value):
        return _integer_array(ta, "sub").sub(index, value)

    @staticmethod
    def and_(ta, index, value):
        return _integer_array(ta, "and_").and_(index, value)

    @staticmethod
    def or_(ta, index, value):
        return _integer_array(ta, "or_").or_(index, value)

    @staticmethod
    def xor(ta, index, value):
        return _integer_array(ta, "xor").xor(index, value)

    @staticmethod
    def exchange(ta, index, value):
        return _integer_array(ta, "exchange").exchange(index, value)

    @staticmethod
    def compare_exchange(ta, index, expected, replacement):
        return _integer_array(ta, "compare_exchange").compare_exchange(index, expected, replacement)

    @staticmethod
    def load(ta, index):
        return _integer_array(ta, "load").load(index)

    @staticmethod
    def store(ta, index, value):
        return _integer_array(ta, "store").store(index, value)

    @staticmethod
    def is_lock_free(size):
        """True when an atomic access of ``size`` bytes is lock-free here (always
        for 4, as ECMAScript requires); any int-like (``__index__``: numpy integers)."""
        if isinstance(size, bool):
            raise TypeError("Atomics.is_lock_free takes a size in bytes (int), not bool")
        try:
            n = operator.index(size)
        except TypeError:
            raise TypeError(f"Atomics.is_lock_free takes a size in bytes (int), not {type(size).__name__}") from None
        return n in (1, 2, 4, 8) and bool(lib.pc_is_lock_free(n))

    @staticmethod
    def pause(iterations=None):
        """A CPU hint for spin-wait loops (x86 PAUSE); iterations defaults to 1."""
        if iterations is None:
            iterations = 1
        else:
            try:
                if isinstance(iterations, bool):
                    raise TypeError
                iterations = operator.index(iterations)
            except TypeError:
                raise TypeError(f"Atomics.pause takes an int or None, not {type(iterations).__name__}") from None
        lib.pc_pause(min(max(iterations, 1), 1 << 20))

    @staticmethod
    def wait(ta, index, value, timeout=None):
        """Sleep until notified: returns "ok", "not-equal" or "timed-out".

        ``timeout`` is in seconds (None = forever). Releases the GIL; signal
        handlers run during the wait, which then resumes with the time left.
        """
        return _wait_fast(ta, index, value, timeout)

    @staticmethod
    async def wait_async(ta, index, value, timeout=None):
        """``await``-able wait: same results as wait, without blocking the event loop."""
        import asyncio  # loaded already where a loop runs; not at import (CLI start-up)
        ta, i, expected, ns = _checked(ta, index, value, timeout, "wait_async")
        slot = _register(ta, i, expected)
        if slot is None:
            return "not-equal"
        header = ta._header
        if ns == 0:
            return _result(lib.pc_wait_release(header, slot))
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def block(_pinned_array):
            # The array pins its SharedBuffer: close() cannot unmap it under this thread.
            try:
                call_restarting(lambda left: lib.pc_wait_block(header, slot, left, 0), ns)
            finally:
                rc = lib.pc_wait_release(header, slot)
                # Skipped when the loop is closed: the awaiting task was cancelled with it.
                call_in_loop(loop, lambda: done.done() or done.set_result(_result(rc)))

        # A thread per pending wait: the futex has no fd for the loop to poll.
        thread = threading.Thread(target=block, args=(ta,), name="Atomics.wait_async", daemon=True)
        thread.start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            lib.pc_wait_abort(header, slot)
            raise

    @staticmethod
    def notify(ta, index, count=None):
        """Wake up to ``count`` waiters (None = all), oldest first; returns how many."""
        return _notify_fast(ta, index, count)


def _make_fast_paths():
    """wait and notify for the common arguments (an exact Int32Array/BigInt64Array,
    an int index in range, an int value or count): one C call, with what they need
    bound in the closure instead of looked up as globals (a ping-pong round trip makes
    four of these calls; Python's overhead is most of a one-CPU round trip)."""
    exact, pc_notify, int_max = _WAITABLE_EXACT, lib.pc_notify, _INT64_MAX
    pc_wait, pool, new_cell, spin, eintr = lib.pc_wait, _held_pool, ffi.new, WAIT_SPIN, EINTR
    results = _RESULTS

    def notify(ta, index, count):
        if type(ta) in exact and type(index) is int and 0 <= index < ta.length:
            if count is None:
                return pc_notify(ta._header, ta.byte_offset + index * ta.BYTES_PER_ELEMENT, -1)
            if type(count) is int:
                return pc_notify(ta._header, ta.byte_offset + index * ta.BYTES_PER_ELEMENT,
                                 0 if count < 0 else count if count < int_max else int_max)
        return _notify(ta, index, count)

    def wait(ta, index, value, timeout):
        if (type(ta) in exact and type(index) is int and 0 <= index < ta.length and type(value) is int
                and timeout is None):
            # The cell's width does the reduction (C compares the low 32 bits for an
            # Int32Array: ToInt32); a value past int64 takes the full path.
            held = pool.pop() if pool else new_cell("int *", -1)
            try:
                try:
                    rc = pc_wait(ta._header, ta._ptr, ta.byte_offset, index, ta.BYTES_PER_ELEMENT, value,
                                 -1, spin, held)
                except OverflowError:
                    rc = None
                else:
                    if rc == eintr:
                        rc = _resume(ta._header, held, -1)
            finally:
                if held[0] >= 0:
                    _give_back(ta._header, held)  # an exception left the wait holding a slot
                else:
                    pool.append(held)
            if rc is not None:
                return results[rc] if rc >= 0 else _finish(rc)
        ta, i, expected, ns = _checked(ta, index, value, timeout, "wait")
        return _wait(ta, i, expected, ns)

    return notify, wait


def _notify(ta, index, count):
    """notify with full validation (and its errors)."""
    ta = _waitable_array(ta, "notify")
    i = ta._index(index)
    if count is None:
        n = -1
    else:
        try:
            if isinstance(count, bool):
                raise TypeError
            n = min(max(operator.index(count), 0), _INT64_MAX)  # larger means "all" anyway
        except TypeError:
            raise TypeError(f"Atomics.notify count must be an int or None, not {type(count).__name__}") from None
    return lib.pc_notify(ta._header, ta.byte_offset + i * ta.BYTES_PER_ELEMENT, n)


_notify_fast, _wait_fast = _make_fast_paths()
