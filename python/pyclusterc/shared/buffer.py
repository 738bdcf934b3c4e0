"""SharedBuffer (a SharedArrayBuffer in a memfd or POSIX shm object) and typed arrays.

A SharedBuffer *is* an ``mmap.mmap`` of the region's data part, which gives it the
buffer protocol (memoryview, numpy) with CPython's own export tracking: ``close()``
with live views raises ``BufferError``, and any use after ``close()`` raises
``ValueError`` instead of touching unmapped memory.
"""
import errno
import mmap
import operator
import os
import sys

from .._lowlevel.native import EPROTO, ENOENT, ENOMEM, ffi, lib, os_error

__all__ = [
    "SharedBuffer", "TypedArray", "IntegerArray",
    "Int8Array", "Uint8Array", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "BigInt64Array", "BigUint64Array", "Float32Array", "Float64Array",
]

_HEADER_SIZE = lib.pc_region_header_size()
_ENDIAN = "<" if sys.byteorder == "little" else ">"
_NAME_MAX = lib.pc_region_name_max()
_SIZE_MAX = (1 << 64) - 1


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"SharedBuffer size must be an int (bytes), not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"SharedBuffer size must be at least 1 byte, got {size}")
    return size


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"SharedBuffer name must be a str, not {type(name).__name__}")
    if (not name or "/" in name or "\0" in name or name in (".", "..")
            or len(name.encode()) > _NAME_MAX):
        raise ValueError(
            f"invalid SharedBuffer name {name!r}: use 1 to {_NAME_MAX} bytes without '/' or NUL"
        )
    return name


class SharedBuffer(mmap.mmap):
    """Zero-filled shared memory of ``size`` bytes (anonymous memfd, or shm when named)."""

    def __new__(cls, size, *, name=None):
        _check_size(size)
        if name is not None:
            _check_name(name)
        # Sizes past uint64 are past any memory too: let C say ENOMEM for them.
        fd = lib.pc_region_create(ffi.NULL if name is None else name.encode(), min(size, _SIZE_MAX))
        if fd < 0:
            label = f"SharedBuffer {name!r}" if name is not None else "SharedBuffer"
            if fd == ENOMEM:
                raise MemoryError(f"cannot create a {label} of {size} bytes: more than this machine's memory"
                                  + (" or /dev/shm's free space" if name is not None else ""))
            if fd == -errno.EEXIST:
                raise FileExistsError(errno.EEXIST, f"a SharedBuffer named {name!r} already exists; "
                                                    "use SharedBuffer.open() to attach to it")
            raise os_error(fd, f"cannot create {label} of {size} bytes")
        return cls._attach(fd, size, name)

    @classmethod
    def open(cls, name):
        """Attach to the named SharedBuffer another process created."""
        _check_name(name)
        fd = lib.pc_region_open(name.encode())
        if fd == ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"no SharedBuffer named {name!r}")
        if fd < 0:
            raise os_error(fd, f"cannot open SharedBuffer {name!r}")
        return cls.from_fd(fd, name)

    @classmethod
    def from_fd(cls, fd, name=None):
        """Map the region of an fd this SharedBuffer then owns (closes): one received
        over a channel (SCM_RIGHTS), or a dup. ValueError when the fd is not a
        pyclusterc SharedBuffer (the fd is closed then too)."""
        size = ffi.new("uint64_t *")
        rc = lib.pc_region_data_size(fd, size)
        if rc < 0:
            os.close(fd)
            if rc == EPROTO:
                raise ValueError(f"{name or 'fd'!r} is not a pyclusterc SharedBuffer")
            raise os_error(rc, f"cannot read SharedBuffer {name!r}")
        return cls._attach(fd, size[0], name)

    @classmethod
    def _attach(cls, fd, size, name):
        try:
            self = mmap.mmap.__new__(cls, fd, size, offset=_HEADER_SIZE)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ENOMEM:
                raise MemoryError(f"cannot map a SharedBuffer of {size} bytes: not enough address space") from None
            raise
        err = ffi.new("int *")
        header = lib.pc_region_map_header(fd, err)
        if header == ffi.NULL:
            mmap.mmap.close(self)
            os.close(fd)
            raise os_error(err[0], "cannot map SharedBuffer header")
        self._fd = fd
        self._header = header
        self._name = name
        return self

    # -- attributes --------------------------------------------------------------
    def _check_open(self):
        if self.closed:
            raise ValueError("operation on a closed SharedBuffer")

    @property
    def byte_length(self):
        self._check_open()
        return len(self)

    @property
    def name(self):
        return self._name

    def fileno(self):
        self._check_open()
        return self._fd

    def resize(self, newsize):
        raise TypeError("a SharedBuffer has a fixed size (other processes map it)")

    # -- lifetime ----------------------------------------------------------------
    def close(self):
        """Unmap and close. Raises BufferError while views (typed arrays, memoryviews,
        numpy arrays) still use the memory."""
        if self.closed:
            return
        try:
            mmap.mmap.close(self)
        except BufferError:
            raise BufferError("cannot close a SharedBuffer while views of it exist "
                              "(typed arrays, memoryviews, numpy arrays): release them first") from None
        self._release_header()

    def _release_header(self):
        header, self._header = getattr(self, "_header", None), None
        if header is not None:
            lib.pc_region_unmap_header(header)
            os.close(self._fd)

    def __del__(self):
        self._release_header()

    def unlink(self):
        """Remove the name (named buffers); mappings stay valid until closed."""
        if self._name is None:
            return
        rc = lib.pc_region_unlink(self._name.encode())
        if rc == ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"no SharedBuffer named {self._name!r}")
        if rc < 0:
            raise os_error(rc, f"cannot unlink SharedBuffer {self._name!r}")

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<SharedBuffer closed>"
        label = f" name={self._name!r}" if self._name else ""
        return f"<SharedBuffer byte_length={len(self)}{label}>"

    def __reduce__(self):
        # Only pyclusterc channels can carry one (they pass the fd).
        raise TypeError("a SharedBuffer can only be sent through pyclusterc (Worker, "
                        "post_message, worker.send), which passes its memory, not a copy")


# ---- typed arrays ---------------------------------------------------------------

def _reducer(bits, signed):
    """JS ToIntN / ToUintN: any int wraps modulo 2**bits; non-integers raise TypeError."""
    mask, half, span = (1 << bits) - 1, 1 << (bits - 1), 1 << bits

    def reduce(value):
        try:
            v = operator.index(value) & mask
        except TypeError:
            raise TypeError(f"Atomics value must be an int, not {type(value).__name__}") from None
        return v - span if signed and v >= half else v

    return reduce


class TypedArray:
    """A view of ``length`` elements of a SharedBuffer, like JS's typed arrays."""

    # _items (a memoryview of the elements) serves indexing; _base holds the one
    # buffer export that pins the mapping for the C calls, taken on the SharedBuffer
    # itself and not on a memoryview: CPython 3.10-3.12 crash when the garbage
    # collector clears a memoryview that still has an export (gh-77894), which a
    # typed array caught in a failed pickle inside a reference cycle reaches.
    # _ptr points into _base and is what the fast paths pass to C.
    __slots__ = ("buffer", "byte_offset", "length", "_items", "_base", "_ptr", "_header",
                 "__weakref__")
    BYTES_PER_ELEMENT = 0
    _format = ""
    _typestr = ""

    def __init__(self, buffer, byte_offset=0, length=None):
        kind, size = type(self).__name__, self.BYTES_PER_ELEMENT
        if isinstance(buffer, int) and not isinstance(buffer, bool):
            if buffer < 0:
                raise ValueError(f"{kind} length must be >= 0, got {buffer}")
            length, byte_offset = buffer, 0
            buffer = SharedBuffer(max(buffer * size, size))
        elif not isinstance(buffer, SharedBuffer):
            raise TypeError(f"{kind}() takes a SharedBuffer or a length (int), not {type(buffer).__name__}")
        buffer._check_open()
        if isinstance(byte_offset, bool) or not isinstance(byte_offset, int):
            raise TypeError(f"{kind} byte_offset must be an int, not {type(byte_offset).__name__}")
        if byte_offset < 0 or byte_offset % size:
            raise ValueError(f"{kind} byte_offset {byte_offset} must be >= 0 and a multiple of "
                             f"BYTES_PER_ELEMENT ({size})")
        available = len(buffer) - byte_offset
        if length is None:
            if available < 0 or available % size:
                raise ValueError(f"{kind}: the SharedBuffer's {len(buffer)} bytes from byte_offset "
                                 f"{byte_offset} are not a whole number of {size}-byte elements")
            length = available // size
        elif isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"{kind} length must be an int or None, not {type(length).__name__}")
        elif length < 0 or length * size > available:
            raise ValueError(f"{kind} of {length} elements at byte_offset {byte_offset} needs "
                             f"{byte_offset + length * size} bytes; the SharedBuffer has {len(buffer)}")
        self.buffer = buffer
        self.byte_offset = byte_offset
        self.length = length
        self._items = memoryview(buffer)[byte_offset:byte_offset + length * size].cast(self._format)
        self._base = ffi.from_buffer(buffer)
        self._ptr = self._base + byte_offset if length else ffi.NULL
        self._header = buffer._header

    @property
    def byte_length(self):
        return self.length * self.BYTES_PER_ELEMENT

    def __reduce__(self):
        # The buffer travels by fd through pyclusterc channels and refuses other
        # picklers with a sentence that says so; never the views' internals.
        return type(self), (self.buffer, self.byte_offset, self.length)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._items[index].tolist()
        return self._items[index]

    def __setitem__(self, index, value):
        try:
            self._items[index] = value
        except (ValueError, TypeError):
            self._items[index] = self._coerce(value)

    def __iter__(self):
        return iter(self._items.tolist())

    def tolist(self):
        return self._items.tolist()

    @property
    def __array_interface__(self):
        address = int(ffi.cast("uintptr_t", self._ptr)) if self.length else 0
        return {"shape": (self.length,), "typestr": self._typestr, "data": (address, False), "version": 3}

    def __repr__(self):
        return f"{type(self).__name__}({self._items.tolist()!r})"

    def _index(self, index):
        """Validate an Atomics index: an int in [0, length) (no negative indices)."""
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"Atomics index must be an int, not {type(index).__name__}") from None
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} is out of range for {type(self).__name__} of length {self.length}")
        return i


class _FloatArray(TypedArray):
    __slots__ = ()

    def _coerce(self, value):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__} elements are numbers, not {type(value).__name__}") from None


def _rmw_method(cfunc, reduce):
    # The fast path is one comparison and the cffi call; anything unusual (a
    # value out of range, a non-int) falls through to full validation.
    def method(self, index, value):
        try:
            if 0 <= index < self.length:
                return cfunc(self._ptr, index, value)
        except (OverflowError, TypeError):
            pass
        return cfunc(self._ptr, self._index(index), reduce(value))
    return method


def _load_method(cfunc):
    def load(self, index):
        try:
            if 0 <= index < self.length:
                return cfunc(self._ptr, index)
        except TypeError:
            pass
        return cfunc(self._ptr, self._index(index))
    return load


def _store_method(cfunc, reduce):
    def store(self, index, value):
        """Store value (wrapped to the element type); returns value as given (JS)."""
        try:
            if 0 <= index < self.length:
                cfunc(self._ptr, index, value)
                return value
        except (OverflowError, TypeError):
            pass
        cfunc(self._ptr, self._index(index), reduce(value))
        return operator.index(value)
    return store


def _compare_exchange_method(cfunc, reduce):
    def compare_exchange(self, index, expected, replacement):
        """Store replacement if the element equals expected; returns the old value."""
        try:
            if 0 <= index < self.length:
                return cfunc(self._ptr, index, expected, replacement)
        except (OverflowError, TypeError):
            pass
        return cfunc(self._ptr, self._index(index), reduce(expected), reduce(replacement))
    return compare_exchange


class IntegerArray(TypedArray):
    """Typed arrays that Atomics accepts; they carry the method forms (the fast path)."""

    __slots__ = ()
    _suffix = ""
    _bits = 0
    _signed = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        reduce = _reducer(cls._bits, cls._signed)
        cls._coerce = staticmethod(reduce)
        cls._reduce = staticmethod(reduce)
        fn = lambda op: getattr(lib, f"pc_{op}_{cls._suffix}")  # noqa: E731
        for op, py_name in (("add", "add"), ("sub", "sub"), ("and", "and_"), ("or", "or_"),
                            ("xor", "xor"), ("exchange", "exchange")):
            method = _rmw_method(fn(op), reduce)
            method.__name__ = py_name
            method.__doc__ = f"Atomic {op}; returns the old value."
            setattr(cls, py_name, method)
        cls.load = _load_method(fn("load"))
        cls.store = _store_method(fn("store"), reduce)
        cls.compare_exchange = _compare_exchange_method(fn("compare_exchange"), reduce)


def _integer_array(name, suffix, fmt, typestr, bits, signed):
    return type(name, (IntegerArray,), {
        "__slots__": (), "__module__": __name__, "BYTES_PER_ELEMENT": bits // 8,
        "_suffix": suffix, "_format": fmt, "_typestr": typestr, "_bits": bits, "_signed": signed,
    })


Int8Array = _integer_array("Int8Array", "i8", "b", "|i1", 8, True)
Uint8Array = _integer_array("Uint8Array", "u8", "B", "|u1", 8, False)
Int16Array = _integer_array("Int16Array", "i16", "h", _ENDIAN + "i2", 16, True)
Uint16Array = _integer_array("Uint16Array", "u16", "H", _ENDIAN + "u2", 16, False)
Int32Array = _integer_array("Int32Array", "i32", "i", _ENDIAN + "i4", 32, True)
Uint32Array = _integer_array("Uint32Array", "u32", "I", _ENDIAN + "u4", 32, False)
BigInt64Array = _integer_array("BigInt64Array", "i64", "q", _ENDIAN + "i8", 64, True)
BigUint64Array = _integer_array("BigUint64Array", "u64", "Q", _ENDIAN + "u8", 64, False)


class Float32Array(_FloatArray):
    __slots__ = ()
    BYTES_PER_ELEMENT = 4
    _format = "f"
    _typestr = _ENDIAN + "f4"


class Float64Array(_FloatArray):
    __slots__ = ()
    BYTES_PER_ELEMENT = 8
    _format = "d"
    _typestr = _ENDIAN + "f8"
