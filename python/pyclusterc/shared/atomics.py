"""``Atomics``: the ECMAScript Atomics operations, with Python names.

Each operation checks that it got an integer typed array and hands over to that
array's method form (``ta.add(i, v)`` etc.), which is the fast path.
"""
import asyncio
import numbers
import operator
import threading

from .._lowlevel.native import EAGAIN, call_restarting, ffi, lib, timeout_ns
from .buffer import (BigInt64Array, Float32Array, Float64Array, Int32Array, TypedArray,
                     _IntegerArray)

__all__ = ["Atomics"]

# Most polls of a waiter's slot before it sleeps in the kernel; the C core spins
# less, or not at all, when spinning does not pay (one usable CPU, or recent waits on
# the cell that the spin missed). A futex wake-up costs tens of microseconds on a VM;
# a notifier on another free CPU usually comes sooner.
WAIT_SPIN = 2000

_WAITABLE = (Int32Array, BigInt64Array)
_INT64_MAX = (1 << 63) - 1


def _integer_array(ta, op):
    if isinstance(ta, _IntegerArray):
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
        ta, i, expected, ns = _checked(ta, index, value, timeout, "wait")
        slot = _register(ta, i, expected)
        if slot is None:
            return "not-equal"
        header = ta._header
        try:
            call_restarting(lambda left: lib.pc_wait_block(header, slot, left, WAIT_SPIN), ns)
        finally:
            rc = lib.pc_wait_release(header, slot)
        return _result(rc)

    @staticmethod
    async def wait_async(ta, index, value, timeout=None):
        """``await``-able wait: same results as wait, without blocking the event loop."""
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
                try:
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(_result(rc)))
                except RuntimeError:
                    pass  # the loop is closed: the awaiting task was cancelled with it

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

