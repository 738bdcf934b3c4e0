"""SharedBuffer and the typed arrays: sizes, names, zero-copy views, lifetime, fork."""
import mmap
import os
import pickle
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyclusterc
from pyclusterc import (Atomics, BigInt64Array, BigUint64Array, Float32Array, Float64Array,
                        Int8Array, Int16Array, Int32Array, Mutex, SharedBuffer, Uint8Array,
                        Uint16Array, Uint32Array)

ALL_ARRAYS = [Int8Array, Uint8Array, Int16Array, Uint16Array, Int32Array, Uint32Array,
              BigInt64Array, BigUint64Array, Float32Array, Float64Array]
SIZES = {Int8Array: 1, Uint8Array: 1, Int16Array: 2, Uint16Array: 2, Int32Array: 4,
         Uint32Array: 4, BigInt64Array: 8, BigUint64Array: 8, Float32Array: 4, Float64Array: 8}
DTYPES = {Int8Array: np.int8, Uint8Array: np.uint8, Int16Array: np.int16, Uint16Array: np.uint16,
          Int32Array: np.int32, Uint32Array: np.uint32, BigInt64Array: np.int64,
          BigUint64Array: np.uint64, Float32Array: np.float32, Float64Array: np.float64}


def one_line(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


# ---- SharedBuffer: sizes ----------------------------------------------------------

@pytest.mark.parametrize("size", [1, 7, 4096, 65537, 1 << 20])
def test_sizes_and_zero_filled(size):
    with SharedBuffer(size) as buf:
        assert buf.byte_length == len(buf) == size
        assert bytes(buf) == bytes(size)
        assert buf.name is None


@pytest.mark.parametrize("size", [0, -1, -(1 << 70)])
def test_non_positive_size_is_value_error(size):
    with pytest.raises(ValueError) as e:
        SharedBuffer(size)
    assert str(size) in one_line(e)


@pytest.mark.parametrize("size", [1.0, 1.5, "16", None, True, b"1"])
def test_non_int_size_is_type_error(size):
    with pytest.raises(TypeError) as e:
        SharedBuffer(size)
    one_line(e)


@pytest.mark.parametrize("size", [1 << 50, (1 << 63) - 1, 1 << 63, 1 << 64, 10 ** 30])
def test_size_past_memory_is_memory_error(size):
    with pytest.raises(MemoryError) as e:
        SharedBuffer(size)
    one_line(e)


def test_named_size_past_dev_shm_is_memory_error(shm_name):
    with pytest.raises(MemoryError) as e:
        SharedBuffer(1 << 50, name=shm_name)
    one_line(e)
    assert not os.path.exists(f"/dev/shm/{shm_name}")


# ---- SharedBuffer: names ----------------------------------------------------------

def test_named_create_open_unlink(shm_name):
    buf = SharedBuffer(100, name=shm_name)
    assert buf.name == shm_name
    mode = os.stat(f"/dev/shm/{shm_name}").st_mode
    assert stat.S_IMODE(mode) == 0o600
    other = SharedBuffer.open(shm_name)
    assert other.byte_length == 100 and other.name == shm_name
    buf[3] = 42
    assert other[3] == 42
    a, b = Int32Array(buf), Int32Array(other)
    Atomics.store(a, 5, -7)
    assert Atomics.load(b, 5) == -7
    del a, b
    buf.unlink()
    with pytest.raises(FileNotFoundError):
        SharedBuffer.open(shm_name)
    with pytest.raises(FileNotFoundError):
        buf.unlink()
    other[4] = 1  # still mapped after unlink
    assert buf[4] == 1
    other.close()
    buf.close()


@pytest.mark.parametrize("name", ["", "a/b", "/lead", ".", "..", "nul\0byte", "x" * 201,
                                  "é" * 101])
def test_invalid_names_are_value_error(name):
    with pytest.raises(ValueError) as e:
        SharedBuffer(8, name=name)
    one_line(e)
    with pytest.raises(ValueError):
        SharedBuffer.open(name)


@pytest.mark.parametrize("name", [1, b"bytes", ["x"]])
def test_non_str_name_is_type_error(name):
    with pytest.raises(TypeError):
        SharedBuffer(8, name=name)
    with pytest.raises(TypeError):
        SharedBuffer.open(name)


def test_longest_name_accepted(shm_name):
    name = (shm_name + "x" * 200)[:200]
    try:
        with SharedBuffer(8, name=name) as buf:
            assert buf.name == name
            buf.unlink()
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_existing_name_is_file_exists_error(shm_name):
    with SharedBuffer(8, name=shm_name) as buf:
        with pytest.raises(FileExistsError) as e:
            SharedBuffer(8, name=shm_name)
        assert shm_name in one_line(e)
        buf.unlink()


def test_open_missing_is_file_not_found(shm_name):
    with pytest.raises(FileNotFoundError) as e:
        SharedBuffer.open(shm_name)
    assert shm_name in one_line(e)


def test_open_foreign_shm_object_is_value_error(shm_name):
    fd = os.open(f"/dev/shm/{shm_name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 100000)
    os.close(fd)
    with pytest.raises(ValueError) as e:
        SharedBuffer.open(shm_name)
    one_line(e)


def test_open_from_unrelated_process(shm_name):
    with SharedBuffer(64, name=shm_name) as buf:
        ta = Int32Array(buf)
        ta[0] = 11
        script = textwrap.dedent(f"""
            from pyclusterc import SharedBuffer, Int32Array, Atomics
            buf = SharedBuffer.open({shm_name!r})
            ta = Int32Array(buf)
            assert buf.byte_length == 64, buf.byte_length
            Atomics.add(ta, 1, ta[0] + 1)
            print(Atomics.load(ta, 1))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "12"
        assert Atomics.load(ta, 1) == 12
        del ta
        buf.unlink()


# ---- SharedBuffer: views, lifetime --------------------------------------------------

def test_memoryview_and_numpy_are_zero_copy():
    buf = SharedBuffer(64)
    view = memoryview(buf)
    arr = np.frombuffer(buf, dtype=np.int32)
    ta = Int32Array(buf)
    arr[3] = 123456
    assert Atomics.load(ta, 3) == 123456
    assert int.from_bytes(view[12:16], sys.byteorder, signed=True) == 123456
    Atomics.store(ta, 4, -2)
    assert arr[4] == -2
    view[0] = 9
    assert arr[0] == 9
    assert np.shares_memory(arr, np.asarray(ta))
    del view, arr, ta
    buf.close()


def test_close_with_live_views_is_buffer_error():
    buf = SharedBuffer(64)
    for make in (memoryview, lambda b: np.frombuffer(b, dtype=np.uint8), Int32Array,
                 lambda b: Mutex(b, 0)):
        view = make(buf)
        with pytest.raises(BufferError) as e:
            buf.close()
        one_line(e)
        assert not buf.closed
        buf[0] = 1  # still usable
        del view
    buf.close()
    assert buf.closed
    buf.close()  # twice is fine


def test_context_manager_with_live_view_is_buffer_error():
    with pytest.raises(BufferError):
        with SharedBuffer(8) as buf:
            view = memoryview(buf)
    del view
    buf.close()


CLOSED_USES = [
    ("byte_length", lambda b: b.byte_length),
    ("fileno", lambda b: b.fileno()),
    ("len", len),
    ("getitem", lambda b: b[0]),
    ("setitem", lambda b: b.__setitem__(0, 1)),
    ("slice", lambda b: b[0:4]),
    ("bytes", bytes),
    ("memoryview", memoryview),
    ("numpy", lambda b: np.frombuffer(b, dtype=np.uint8)),
    ("typed array", Int32Array),
    ("typed array offset", lambda b: Uint8Array(b, 1, 1)),
    ("mutex", lambda b: Mutex(b, 0)),
    ("read", lambda b: b.read(1)),
    ("write", lambda b: b.write(b"x")),
    ("seek", lambda b: b.seek(0)),
    ("find", lambda b: b.find(b"x")),
    ("flush", lambda b: b.flush()),
    ("move", lambda b: b.move(0, 1, 1)),
    ("size", lambda b: b.size()),
    ("tell", lambda b: b.tell()),
    ("readline", lambda b: b.readline()),
    ("enter", lambda b: b.__enter__()),
]


@pytest.mark.parametrize("use", [u for _, u in CLOSED_USES], ids=[n for n, _ in CLOSED_USES])
def test_use_after_close_is_value_error(use):
    buf = SharedBuffer(16)
    buf.close()
    with pytest.raises(ValueError):
        use(buf)
    assert "closed" in repr(buf)


def test_typed_array_pins_buffer_until_released():
    buf = SharedBuffer(16)
    ta = Int32Array(buf)
    Atomics.store(ta, 0, 5)
    with pytest.raises(BufferError):
        buf.close()
    assert Atomics.load(ta, 0) == 5
    del ta
    buf.close()


def test_fileno_and_close_on_exec():
    with SharedBuffer(10) as buf:
        fd = buf.fileno()
        assert isinstance(fd, int)
        assert not os.get_inheritable(fd)
        header = os.fstat(fd).st_size - 10
        assert header >= 4096 and header % 4096 == 0


def test_resize_refused_and_not_picklable():
    with SharedBuffer(10) as buf:
        with pytest.raises(TypeError):
            buf.resize(20)
        assert buf.byte_length == 10
        with pytest.raises(TypeError):
            pickle.dumps(buf)


def test_is_an_mmap_and_repr():
    with SharedBuffer(10) as buf:
        assert isinstance(buf, mmap.mmap)
        assert "byte_length=10" in repr(buf)


def test_shared_with_child_after_fork(fork):
    buf = SharedBuffer(64)
    ta = Int32Array(buf)
    ta[0] = 5

    def child():
        assert Atomics.load(ta, 0) == 5
        Atomics.store(ta, 1, 77)
        np.frombuffer(buf, dtype=np.int32)[2] = 88
        buf2 = ta.buffer
        assert buf2 is buf

    assert fork(child).join() == 0
    assert ta[1] == 77 and Atomics.load(ta, 2) == 88


def test_close_in_child_leaves_parent_mapping(fork):
    buf = SharedBuffer(64)
    buf[0] = 3

    def child():
        buf.close()

    assert fork(child).join() == 0
    assert buf[0] == 3
    buf.close()


# ---- typed arrays -------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL_ARRAYS)
def test_typed_array_from_length(cls):
    ta = cls(5)
    assert cls.BYTES_PER_ELEMENT == SIZES[cls] == ta.BYTES_PER_ELEMENT
    assert len(ta) == ta.length == 5
    assert ta.byte_length == 5 * SIZES[cls]
    assert ta.byte_offset == 0
    assert isinstance(ta.buffer, SharedBuffer)
    assert list(ta) == [0] * 5 == ta[:]
    assert cls(0).length == 0 and list(cls(0)) == []


@pytest.mark.parametrize("cls", ALL_ARRAYS)
def test_typed_array_over_buffer(cls):
    size = SIZES[cls]
    buf = SharedBuffer(16 * size)
    whole = cls(buf)
    assert whole.length == 16
    part = cls(buf, 4 * size, 3)
    assert (part.byte_offset, part.length, part.byte_length) == (4 * size, 3, 3 * size)
    tail = cls(buf, 10 * size)
    assert tail.length == 6
    assert cls(buf, 16 * size).length == 0
    part[0] = 7
    part[-1] = 9
    assert whole[4] == 7 and whole[6] == 9 and part[2] == 9
    assert part[-3] == 7
    assert whole[4:7] == [7, 0, 9] and whole[::-1][9:12] == [9, 0, 7]
    assert list(iter(part)) == [7, 0, 9]
    with pytest.raises(IndexError):
        part[3]
    with pytest.raises(IndexError):
        part[-4]
    with pytest.raises(IndexError):
        part[3] = 1


@pytest.mark.parametrize("cls", [c for c in ALL_ARRAYS if SIZES[c] > 1])
def test_misaligned_offset_is_value_error(cls):
    buf = SharedBuffer(64)
    with pytest.raises(ValueError) as e:
        cls(buf, 1)
    one_line(e)
    with pytest.raises(ValueError):
        cls(buf, 1, 1)


@pytest.mark.parametrize("cls", ALL_ARRAYS)
def test_range_past_end_is_value_error(cls):
    size = SIZES[cls]
    buf = SharedBuffer(8 * size)
    for offset, length in ((0, 9), (size, 8), (9 * size, None), (8 * size, 1), (-size, 1)):
        with pytest.raises(ValueError) as e:
            cls(buf, offset, length)
        one_line(e)
    with pytest.raises(ValueError):
        cls(buf, 0, -1)
    with pytest.raises(ValueError):
        cls(-1)


@pytest.mark.parametrize("cls", [c for c in ALL_ARRAYS if SIZES[c] > 1])
def test_buffer_not_whole_elements_is_value_error(cls):
    buf = SharedBuffer(SIZES[cls] * 3 + 1)
    with pytest.raises(ValueError):
        cls(buf)
    assert cls(buf, 0, 3).length == 3


@pytest.mark.parametrize("bad", [b"1234", bytearray(8), 1.5, None, "8", memoryview(bytearray(8))])
def test_typed_array_bad_source_is_type_error(bad):
    with pytest.raises(TypeError) as e:
        Int32Array(bad)
    one_line(e)


def test_typed_array_bad_offset_and_length_types():
    buf = SharedBuffer(16)
    with pytest.raises(TypeError):
        Int32Array(buf, 0.0)
    with pytest.raises(TypeError):
        Int32Array(buf, 0, 1.0)
    with pytest.raises(TypeError):
        Int32Array(buf, "0")


@pytest.mark.parametrize("cls", ALL_ARRAYS)
def test_numpy_asarray_zero_copy_both_directions(cls):
    ta = cls(6)
    arr = np.asarray(ta)
    assert arr.dtype == DTYPES[cls] and arr.shape == (6,)
    arr[2] = 5
    assert ta[2] == 5
    ta[3] = 6
    assert arr[3] == 6
    assert np.shares_memory(arr, np.frombuffer(ta.buffer, dtype=np.uint8))
    # an offset view lines up with the buffer
    part = cls(ta.buffer, 2 * SIZES[cls], 2)
    assert list(np.asarray(part)) == [5, 6]
    assert np.asarray(cls(0)).shape == (0,)


def test_numpy_array_keeps_typed_array_alive():
    buf = SharedBuffer(16)
    arr = np.asarray(Int32Array(buf))
    with pytest.raises(BufferError):
        buf.close()
    arr[0] = 1
    assert buf[0] == 1
    del arr
    buf.close()


@pytest.mark.parametrize("cls,value,stored", [
    (Int8Array, 200, -56), (Uint8Array, -1, 255), (Uint8Array, 256 + 7, 7),
    (Int16Array, 1 << 15, -(1 << 15)), (Uint32Array, -1, (1 << 32) - 1),
    (Int32Array, 1 << 40, 0), (BigInt64Array, 1 << 63, -(1 << 63)),
    (BigUint64Array, -1, (1 << 64) - 1),
])
def test_setitem_wraps_like_js(cls, value, stored):
    ta = cls(1)
    ta[0] = value
    assert ta[0] == stored


def test_setitem_wrong_types():
    ta = Int32Array(2)
    with pytest.raises(TypeError):
        ta[0] = 1.5
    with pytest.raises(TypeError):
        ta[0] = "1"
    fa = Float64Array(2)
    fa[0] = 1
    fa[1] = 2.5
    assert fa[:] == [1.0, 2.5]
    with pytest.raises(TypeError):
        fa[0] = "x"


def test_package_exports():
    for name in ("SharedBuffer", "Atomics", "Mutex", "Condition", "Semaphore", "Barrier"):
        assert hasattr(pyclusterc, name)
