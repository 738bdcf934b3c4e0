"""Mutex, Condition, Semaphore and Barrier living in a SharedBuffer.

Each is a few 32-bit words at a 4-byte-aligned offset; any process or thread that
constructs one over the same bytes shares it. All-zero bytes are an unlocked Mutex.
"""
import threading

from .._lowlevel.native import EINTR, EPERM, EPIPE, ETIMEDOUT, call_restarting, ffi, lib, os_error, timeout_ns
from .buffer import SharedBuffer

__all__ = ["Mutex", "Condition", "Semaphore", "Barrier"]

# Polls before sleeping in the kernel: a hand-off between two processes on two
# cores usually lands within a few microseconds; a futex wake-up costs tens.
SPIN = 4000

_INT64_MAX = (1 << 63) - 1
_UINT32_MAX = (1 << 32) - 1


class _SharedWords:
    """A run of 32-bit words inside a SharedBuffer, pinned while this object lives."""

    __slots__ = ("buffer", "byte_offset", "_view", "_ptr")
    BYTES = 4

    def __init__(self, buffer, byte_offset=0):
        kind = type(self).__name__
        if not isinstance(buffer, SharedBuffer):
            raise TypeError(f"{kind} lives in a SharedBuffer, not {type(buffer).__name__}")
        buffer._check_open()
        if isinstance(byte_offset, bool) or not isinstance(byte_offset, int):
            raise TypeError(f"{kind} byte_offset must be an int, not {type(byte_offset).__name__}")
        if byte_offset < 0 or byte_offset % 4:
            raise ValueError(f"{kind} byte_offset {byte_offset} must be >= 0 and a multiple of 4")
        if byte_offset + self.BYTES > len(buffer):
            raise ValueError(f"{kind} needs {self.BYTES} bytes at byte_offset {byte_offset}; "
                             f"the SharedBuffer has {len(buffer)}")
        self.buffer = buffer
        self.byte_offset = byte_offset
        self._view = memoryview(buffer)[byte_offset:byte_offset + self.BYTES]
        self._ptr = ffi.from_buffer(self._view)

    def __repr__(self):
        return f"<{type(self).__name__} at byte_offset {self.byte_offset}>"


def _acquired(rc, what):
    if rc == 0:
        return True
    if rc == ETIMEDOUT:
        return False
    raise os_error(rc, what)


class Mutex(_SharedWords):
    """A lock in one word of shared memory (0 = unlocked), like threading.Lock."""

    __slots__ = ()
    BYTES = 4

    def acquire(self, blocking=True, timeout=None):
        """Returns True once held, False on timeout (or when busy and not blocking)."""
        ptr = self._ptr
        ns = -1 if timeout is None else timeout_ns(timeout)
        if lib.pc_mutex_trylock(ptr) == 0:
            return True  # uncontended: one call
        if not blocking:
            return False
        rc = call_restarting(lambda left: lib.pc_mutex_lock(ptr, left, SPIN), ns)
        return _acquired(rc, "Mutex.acquire")

    def release(self):
        if lib.pc_mutex_unlock(self._ptr) == EPERM:
            raise RuntimeError("release of an unlocked Mutex")

    def locked(self):
        return ffi.cast("uint32_t *", self._ptr)[0] != 0

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


class Condition(_SharedWords):
    """A condition variable (two words) used with a Mutex, like threading.Condition."""

    __slots__ = ("mutex",)
    BYTES = 8

    def __init__(self, buffer, byte_offset, mutex):
        if not isinstance(mutex, Mutex):
            raise TypeError(f"Condition needs a Mutex, not {type(mutex).__name__}")
        super().__init__(buffer, byte_offset)
        self.mutex = mutex

    def __enter__(self):
        return self.mutex.__enter__()

    def __exit__(self, *exc):
        return self.mutex.__exit__(*exc)

    def wait(self, timeout=None):
        """Release the mutex, sleep until notified, re-acquire. False on timeout.

        Like any condition variable it may wake without a notify: check the
        predicate in a loop, or use wait_for."""
        if not self.mutex.locked():
            raise RuntimeError("Condition.wait needs its Mutex held")
        rc = lib.pc_cond_wait(self._ptr, self.mutex._ptr, timeout_ns(timeout))
        if rc == EINTR:
            return True  # a signal handler ran: report a wake-up, the caller re-checks
        return _acquired(rc, "Condition.wait")

    def wait_for(self, predicate, timeout=None):
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n=1):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"Condition.notify takes a count >= 0, got {n!r}")
        lib.pc_cond_notify(self._ptr, min(n, _INT64_MAX))

    def notify_all(self):
        lib.pc_cond_notify(self._ptr, -1)


class Semaphore(_SharedWords):
    """A counting semaphore (two words). ``value`` initialises it; None attaches."""

    __slots__ = ()
    BYTES = 8

    def __init__(self, buffer, byte_offset=0, value=None):
        super().__init__(buffer, byte_offset)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise ValueError(f"Semaphore value must be an int from 0 to 2**31-1, got {value!r}")
            lib.pc_sem_init(self._ptr, value)

    def acquire(self, blocking=True, timeout=None):
        ptr = self._ptr
        ns = timeout_ns(timeout) if blocking else 0
        rc = call_restarting(lambda left: lib.pc_sem_acquire(ptr, left, SPIN if blocking else 0), ns)
        return _acquired(rc, "Semaphore.acquire")

    def release(self, n=1):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Semaphore.release takes a count >= 1, got {n!r}")
        rc = lib.pc_sem_release(self._ptr, n) if n <= _UINT32_MAX else -1
        if rc < 0:
            raise ValueError(f"Semaphore value would overflow past 2**32-1 (release({n}))")

    @property
    def value(self):
        return lib.pc_sem_value(self._ptr)

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


class Barrier(_SharedWords):
    """``parties`` processes/threads wait until all have arrived (three words).

    The first constructor over zeroed bytes sets it up; later ones attach and must
    name the same ``parties``."""

    __slots__ = ("parties",)
    BYTES = 12

    def __init__(self, buffer, byte_offset, parties):
        super().__init__(buffer, byte_offset)
        if isinstance(parties, bool) or not isinstance(parties, int) or not 1 <= parties <= 0xFFFF:
            raise ValueError(f"Barrier parties must be an int from 1 to 65535, got {parties!r}")
        if lib.pc_barrier_init(self._ptr, parties) < 0:
            raise ValueError(f"a Barrier for {ffi.cast('uint32_t *', self._ptr)[0]} parties already "
                             f"lives at byte_offset {byte_offset}, not {parties}")
        self.parties = parties

    def wait(self, timeout=None):
        """Returns this arrival's index (parties - 1 for the last). A timeout breaks
        the barrier: every waiter then gets threading.BrokenBarrierError."""
        ns = timeout_ns(timeout)  # before arriving: a bad timeout must not count as a party
        generation = ffi.new("uint32_t *")
        index = lib.pc_barrier_arrive(self._ptr, generation)
        if index == EPIPE:
            raise threading.BrokenBarrierError
        if index == self.parties - 1:
            return index
        ptr, gen = self._ptr, generation[0]
        try:
            rc = call_restarting(lambda left: lib.pc_barrier_await(ptr, gen, left, SPIN), ns)
        except BaseException:
            # A signal handler raised: this party leaves, so the round can never be
            # right; break it for everyone, as threading.Barrier does.
            lib.pc_barrier_abort(ptr)
            raise
        if rc in (ETIMEDOUT, EPIPE):
            raise threading.BrokenBarrierError
        return index

    def abort(self):
        """Break the barrier: current and later waiters get BrokenBarrierError."""
        lib.pc_barrier_abort(self._ptr)

    @property
    def broken(self):
        return ffi.cast("uint32_t *", self._ptr)[2] != 0
