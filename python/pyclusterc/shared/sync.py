"""Mutex, Condition, Semaphore and Barrier in shared memory, across processes and threads.

Each is a few 32-bit words of a SharedBuffer::

    Mutex()                     threading's signatures: each allocates its own
    Semaphore(value=1)          SharedBuffer, shared with forks as the memory is, and
    Barrier(parties, ...)       with workers by sending the object itself (a pyclusterc
    Condition(lock=None)        channel passes the buffer's fd, as for SharedBuffer)

    Mutex(buffer, byte_offset)  placement: the words at byte_offset of a given buffer;
                                any process that constructs one over the same bytes
                                shares it (all-zero bytes are an unlocked Mutex)

In one process, two primitives over overlapping bytes are refused (ValueError): they
would corrupt each other's words. Waits spin only while spinning pays (the C core
decides: not with one usable CPU, and per cell from recent waits), then sleep in the
kernel; they release the GIL and let signal handlers run (PEP 475).

A Mutex is robust: when its owner died holding it (its process was killed), the next
acquirer gets it and ``OwnerDied`` is raised to say so, as POSIX robust mutexes return
EOWNERDEAD. Semaphores and Barriers have no owner and no such recovery.
"""
import errno
import os
import threading
import time
import weakref

from .._lowlevel.native import EINTR, EPERM, EPIPE, ETIMEDOUT, call_restarting, ffi, lib, os_error, timeout_ns
from .buffer import SharedBuffer

__all__ = ["Mutex", "Condition", "Semaphore", "Barrier", "OwnerDied"]

# Most polls before sleeping in the kernel (the C core spins less when it does not
# pay): a hand-off between two processes on two free CPUs usually lands within a few
# microseconds; a futex wake-up costs tens.
SPIN = 4000

_EOWNERDEAD = -errno.EOWNERDEAD
_EBUSY = -errno.EBUSY
_INT64_MAX = (1 << 63) - 1
_UINT32_MAX = (1 << 32) - 1


class OwnerDied(RuntimeError):
    """The Mutex's previous owner died holding it. The caller now holds the Mutex
    (as after EOWNERDEAD from a POSIX robust mutex): what it guards may be half
    updated; make it consistent, then ``release()``. From ``with mutex:`` the Mutex
    is released again before this is raised, since the block does not run."""

    def __init__(self, mutex):
        super().__init__(f"{mutex!r}: its previous owner died holding it; the lock is now held "
                         "by this thread (repair the state it guards, then release())")
        self.mutex = mutex


# ---- placements: who uses which bytes, per process --------------------------------------

# (device, inode) of a buffer's memory -> {(start, end): weakref to the primitive}.
# Keyed by the memory, not the SharedBuffer object: two SharedBuffers received for
# one region are the same bytes.
_placements = {}
# Reentrant: an allocation inside _claim can start a garbage collection that frees a dead
# primitive, whose weakref callback (_release) then runs on this thread, inside _claim.
_placements_lock = threading.RLock()


def _memory_key(buffer):
    st = os.fstat(buffer.fileno())
    return st.st_dev, st.st_ino


def _claim(obj, buffer, start, end, reuse):
    """Record obj over [start, end) of buffer; returns obj, or (reuse) the live object
    of the same type over exactly those bytes. Raises ValueError on an overlap."""
    key = _memory_key(buffer)
    with _placements_lock:
        ranges = _placements.setdefault(key, {})
        for (s, e), ref in list(ranges.items()):
            other = ref()
            if other is None:
                ranges.pop((s, e), None)  # (a _release run meanwhile may have taken it)
            elif s < end and start < e:
                if reuse and (s, e) == (start, end) and type(other) is type(obj):
                    return other
                raise ValueError(f"{type(obj).__name__} at bytes {start}..{end - 1} of this SharedBuffer "
                                 f"overlaps the {type(other).__name__} at bytes {s}..{e - 1}: "
                                 "place each primitive on bytes of its own (BYTES tells how many)")
        ref = weakref.ref(obj, lambda _ref, k=key, r=(start, end): _release(k, r, _ref))
        # Looked up again: a _release run by a collection above may have dropped the dict.
        _placements.setdefault(key, {})[(start, end)] = ref
    return obj


def _release(key, span, ref):
    with _placements_lock:
        ranges = _placements.get(key)
        if ranges is not None and ranges.get(span) is ref:
            del ranges[span]
            if not ranges:
                del _placements[key]


def _rebuild(cls, buffer, byte_offset, args):
    """Unpickle (a pyclusterc channel): attach to the words, never initialise them.
    In the sending process itself (the thread backend) this is the same object."""
    self = cls.__new__(cls)
    found = self._place(buffer, byte_offset, reuse=True)
    if found is not self:
        return found
    self._attach(*args)
    return self


class _SharedWords:
    """A run of 32-bit words inside a SharedBuffer, pinned while this object lives."""

    __slots__ = ("buffer", "byte_offset", "_base", "_ptr", "__weakref__")

    def _place(self, buffer, byte_offset, reuse=False):
        kind = type(self).__name__
        if buffer is None:
            buffer, byte_offset = SharedBuffer(self.BYTES), 0
        elif not isinstance(buffer, SharedBuffer):
            raise TypeError(f"{kind} lives in a SharedBuffer, not {type(buffer).__name__}")
        buffer._check_open()
        if isinstance(byte_offset, bool) or not isinstance(byte_offset, int):
            raise TypeError(f"{kind} byte_offset must be an int, not {type(byte_offset).__name__}")
        if byte_offset < 0 or byte_offset % 4:
            raise ValueError(f"{kind} byte_offset {byte_offset} must be >= 0 and a multiple of 4")
        if byte_offset + self.BYTES > len(buffer):
            raise ValueError(f"{kind} needs {self.BYTES} bytes at byte_offset {byte_offset}; "
                             f"the SharedBuffer has {len(buffer)}")
        found = _claim(self, buffer, byte_offset, byte_offset + self.BYTES, reuse)
        if found is not self:
            return found
        self.buffer = buffer
        self.byte_offset = byte_offset
        # The export that pins the mapping is taken on the SharedBuffer, not on a
        # memoryview (CPython gh-77894, see TypedArray).
        self._base = ffi.from_buffer(buffer)
        self._ptr = self._base + byte_offset
        return self

    def _fields(self):
        """The words as C lays them out (struct pc_mutex, pc_barrier, ... in pc_shared.h)."""
        return ffi.cast(self._STRUCT, self._ptr)

    def __repr__(self):
        return f"<{type(self).__name__} at byte_offset {self.byte_offset}>"


def _acquired(rc, what):
    if rc == 0:
        return True
    if rc == ETIMEDOUT:
        return False
    raise os_error(rc, what)


class Mutex(_SharedWords):
    """A lock in one word of shared memory (0 = unlocked), like threading.Lock.

    ``Mutex()`` allocates its own memory; ``Mutex(buffer, byte_offset=0)`` places it
    in a SharedBuffer. Robust: if the owner's process dies holding it, the next
    ``acquire()`` takes it and raises ``OwnerDied`` (the caller then holds it).
    Like threading.Lock, any thread or process may release it."""

    __slots__ = ()
    _STRUCT = "struct pc_mutex *"
    BYTES = ffi.sizeof("struct pc_mutex")

    def __init__(self, buffer=None, byte_offset=0):
        self._place(buffer, byte_offset)

    def _attach(self):
        pass

    def __reduce__(self):
        return _rebuild, (type(self), self.buffer, self.byte_offset, ())

    def acquire(self, blocking=True, timeout=None):
        """True once held; False on timeout, or when busy and not blocking.
        Raises OwnerDied (holding the lock) when the previous owner died with it."""
        ptr = self._ptr
        ns = -1 if timeout is None else timeout_ns(timeout)
        if lib.pc_mutex_trylock(ptr) == 0:
            return True  # uncontended: one call
        if not blocking:
            return self._result(lib.pc_mutex_lock(ptr, 0, 0))  # also looks at the owner's life
        return self._result(call_restarting(lambda left: lib.pc_mutex_lock(ptr, left, SPIN), ns))

    def _result(self, rc):
        if rc == _EOWNERDEAD:
            raise OwnerDied(self)
        if rc == _EBUSY:
            return False
        return _acquired(rc, "Mutex.acquire")

    def release(self):
        if lib.pc_mutex_unlock(self._ptr) == EPERM:
            raise RuntimeError("release of an unlocked Mutex")

    def locked(self):
        return self._fields().word != 0

    def __enter__(self):
        try:
            return self.acquire()
        except OwnerDied:
            self.release()  # the with-block will not run, and __exit__ not be called
            raise

    def __exit__(self, *exc):
        self.release()


class Condition(_SharedWords):
    """A condition variable (two words) used with a Mutex, like threading.Condition.

    ``Condition(lock=None)`` allocates its own memory (and a new Mutex when lock is
    None); ``Condition(buffer, byte_offset, mutex)`` places it in a SharedBuffer."""

    __slots__ = ("mutex",)
    _STRUCT = "struct pc_cond *"
    BYTES = ffi.sizeof("struct pc_cond")

    def __init__(self, buffer=None, byte_offset=0, mutex=None, *, lock=None):
        if buffer is not None and not isinstance(buffer, SharedBuffer):
            buffer, lock = None, buffer  # Condition(lock): threading's signature
        elif buffer is not None and mutex is None and lock is None:
            raise TypeError("Condition(buffer, byte_offset, mutex) needs the Mutex it is used with")
        mutex = mutex if mutex is not None else lock
        if mutex is None:
            mutex = Mutex()
        if not isinstance(mutex, Mutex):
            raise TypeError(f"Condition needs a Mutex, not {type(mutex).__name__}")
        self._place(buffer, byte_offset)
        self.mutex = mutex

    def _attach(self, mutex):
        self.mutex = mutex

    def __reduce__(self):
        return _rebuild, (type(self), self.buffer, self.byte_offset, (self.mutex,))

    def acquire(self, *args, **kwargs):
        return self.mutex.acquire(*args, **kwargs)

    def release(self):
        self.mutex.release()

    def __enter__(self):
        return self.mutex.__enter__()

    def __exit__(self, *exc):
        return self.mutex.__exit__(*exc)

    def wait(self, timeout=None):
        """Release the mutex, sleep until notified, re-acquire. False on timeout.

        Like any condition variable it may wake without a notify: check the
        predicate in a loop, or use wait_for. Raises OwnerDied (holding the mutex)
        when the re-acquire took it over from an owner that died."""
        if not self.mutex.locked():
            raise RuntimeError("Condition.wait needs its Mutex held")
        rc = lib.pc_cond_wait(self._ptr, self.mutex._ptr, timeout_ns(timeout))
        if rc == _EOWNERDEAD:
            raise OwnerDied(self.mutex)
        if rc == EINTR:
            return True  # a signal handler ran: report a wake-up, the caller re-checks
        return _acquired(rc, "Condition.wait")

    def wait_for(self, predicate, timeout=None):
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


def _check_semaphore_value(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"Semaphore value must be an int from 0 to 2**31-1, got {value!r}")
    return value


class Semaphore(_SharedWords):
    """A counting semaphore (two words).

    ``Semaphore(value=1)`` allocates its own memory (threading's signature);
    ``Semaphore(buffer, byte_offset=0, value=None)`` places it in a SharedBuffer,
    where ``value`` initialises it and None attaches to what is there."""

    __slots__ = ()
    _STRUCT = "struct pc_sem *"
    BYTES = ffi.sizeof("struct pc_sem")

    def __init__(self, buffer=None, byte_offset=0, value=None):
        if buffer is not None and not isinstance(buffer, SharedBuffer):
            if isinstance(buffer, int) and not isinstance(buffer, bool):
                buffer, value = None, buffer  # Semaphore(3): threading's signature
            else:
                raise TypeError(f"Semaphore() takes a value (int) or a SharedBuffer, "
                                f"not {type(buffer).__name__}")
        if buffer is None and value is None:
            value = 1
        if value is not None:
            _check_semaphore_value(value)
        self._place(buffer, byte_offset)
        if value is not None:
            lib.pc_sem_init(self._ptr, value)

    def _attach(self):
        pass

    def __reduce__(self):
        return _rebuild, (type(self), self.buffer, self.byte_offset, ())

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


def _check_parties(parties):
    if isinstance(parties, bool) or not isinstance(parties, int) or not 1 <= parties <= 0xFFFF:
        raise ValueError(f"Barrier parties must be an int from 1 to 65535, got {parties!r}")
    return parties


class Barrier(_SharedWords):
    """``parties`` processes/threads wait until all have arrived (three words).

    ``Barrier(parties, action=None, timeout=None)`` allocates its own memory
    (threading's signature); ``Barrier(buffer, byte_offset, parties, ...)`` places
    it in a SharedBuffer: the first constructor over zeroed bytes sets it up, later
    ones attach and must name the same ``parties``. ``action`` runs in the process
    whose party arrives last, before any party is released (threading's order); if
    it raises, the barrier is broken. ``timeout`` is the default for ``wait()``."""

    __slots__ = ("parties", "action", "timeout")
    _STRUCT = "struct pc_barrier *"
    BYTES = ffi.sizeof("struct pc_barrier")

    def __init__(self, *args, **kwargs):
        if (args and isinstance(args[0], SharedBuffer)) or "buffer" in kwargs:
            self._setup(*args, **kwargs)
        elif args and (isinstance(args[0], bool) or not isinstance(args[0], int)):
            raise TypeError(f"Barrier() takes parties (an int) or a SharedBuffer, not {type(args[0]).__name__}")
        else:  # Barrier(parties, action=None, timeout=None): threading's signature
            self._setup(None, 0, *args, **kwargs)

    def _setup(self, buffer, byte_offset=0, parties=None, action=None, timeout=None):
        _check_parties(parties)
        if action is not None and not callable(action):
            raise TypeError(f"Barrier action must be callable or None, not {type(action).__name__}")
        if timeout is not None:
            timeout_ns(timeout)  # a bad default timeout fails here, not at the first wait
        self._place(buffer, byte_offset)
        if lib.pc_barrier_init(self._ptr, parties) < 0:
            raise ValueError(f"a Barrier for {self._fields().parties} parties already "
                             f"lives at byte_offset {self.byte_offset}, not {parties}")
        self._attach(parties, action, timeout)

    def _attach(self, parties, action, timeout):
        self.parties, self.action, self.timeout = parties, action, timeout

    def __reduce__(self):
        return _rebuild, (type(self), self.buffer, self.byte_offset, (self.parties, self.action, self.timeout))

    def _round(self, ns):
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

    def wait(self, timeout=None):
        """Returns this arrival's index (parties - 1 for the last). A timeout breaks
        the barrier: every waiter then gets threading.BrokenBarrierError."""
        # before arriving: a bad timeout must not count as a party
        ns = timeout_ns(self.timeout if timeout is None else timeout)
        if self.action is None:
            return self._round(ns)
        # With an action: a first round finds the last arrival, which runs it while
        # the others wait in a second round.
        index = self._round(ns)
        if index == self.parties - 1:
            try:
                self.action()
            except BaseException:
                lib.pc_barrier_abort(self._ptr)
                raise
        self._round(ns)
        return index

    def abort(self):
        """Break the barrier: current and later waiters get BrokenBarrierError."""
        lib.pc_barrier_abort(self._ptr)

    @property
    def broken(self):
        return self._fields().broken != 0

    @property
    def n_waiting(self):
        return self._fields().state & 0xFFFF  # state = generation << 16 | arrived
