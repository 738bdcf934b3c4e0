"""tc39/test262 ``test/built-ins/Atomics/`` ported to pyclusterc's Atomics.

Every upstream file is listed in ``test262_atomics.tsv`` beside this module, with the
test below that ports it: each such file is one pytest case, named by its path (for
example ``test_bad_range[add/bigint/bad-range.js]``), whose assertions translate the
file's into Python against our API. A file that tests something pyclusterc cannot have
(non-shared, resizable, detached or immutable ArrayBuffers) is marked ``n/a`` there,
with the reason; ``test_manifest_covers_every_upstream_file`` keeps the list whole.

Translation rules (DESIGN.md, "Shared memory and atomics"):
  - JS names -> Python names (compareExchange -> compare_exchange, and -> and_, ...);
    JS ``length`` -> the parameter list; ``name`` -> ``__name__``.
  - RangeError -> IndexError; TypeError -> TypeError; a poisoned ``valueOf`` ->
    a poisoned ``__index__`` / ``__float__`` (its exception propagates, or it is
    never called where test262 says so).
  - JS coerces anything to a number; Python does not: indices, values and counts
    are ints or int-likes (``__index__``: numpy integers), timeouts are seconds as
    int, float, int-like or real (numpy, Fraction). Booleans, strings, None-as-index
    and other objects raise TypeError instead of being coerced (where test262 coerces
    ``true``, ``null`` or ``"1"``, the port asserts that TypeError).
  - Timeouts are seconds, not milliseconds; ``None`` (JS ``undefined``) waits forever,
    and so does NaN; a negative timeout is 0.
  - ``wait_async`` is a coroutine returning the string JS puts in ``.value``.
  - An "agent" is another process (forked) or thread.

test262 is distributed under this licence:

    Test262: ECMAScript Test Suite ("Software") is protected by copyright and is being
    made available under the "BSD License", included below. This Software may be
    subject to third party rights (rights from parties other than Ecma International),
    including patent rights, and no licenses under such third party rights are granted
    under this license even if the third party concerned is a member of Ecma
    International. SEE THE ECMA CODE OF CONDUCT IN PATENT MATTERS AVAILABLE AT
    https://www.ecma-international.org/ipr FOR INFORMATION REGARDING THE LICENSING OF
    PATENT CLAIMS THAT ARE REQUIRED TO IMPLEMENT ECMA INTERNATIONAL STANDARDS*.

    Copyright (C) 2012 Ecma International
    All rights reserved.

    Redistribution and use in source and binary forms, with or without modification,
    are permitted provided that the following conditions are met:
    1. Redistributions of source code must retain the above copyright notice, this
       list of conditions and the following disclaimer.
    2. Redistributions in binary form must reproduce the above copyright notice, this
       list of conditions and the following disclaimer in the documentation and/or
       other materials provided with the distribution.
    3. Neither the name of the authors nor Ecma International may be used to endorse
       or promote products derived from this software without specific prior written
       permission.

    THIS SOFTWARE IS PROVIDED BY THE ECMA INTERNATIONAL "AS IS" AND ANY EXPRESS OR
    IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
    MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT
    SHALL ECMA INTERNATIONAL BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
    EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
    SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
    INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT,
    STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY
    OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

    * Ecma International Standards hereafter means Ecma International Standards as
    well as Ecma Technical Reports
"""
import asyncio
import fractions
import inspect
import os
import threading
import time

import numpy as np
import pytest

from conftest import poll, wait_for_waiters, waiters
import pyclusterc
from pyclusterc import (Atomics, BigInt64Array, BigUint64Array, Float32Array, Float64Array,
                        Int8Array, Int16Array, Int32Array, SharedBuffer, Uint8Array, Uint16Array,
                        Uint32Array)

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM_FILES = 389  # test/built-ins/Atomics/ at the commit named in the .tsv


def _manifest():
    entries = {}
    with open(os.path.join(HERE, "test262_atomics.tsv")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                path, target = line.rstrip("\n").split("\t")
                entries[path] = target
    return entries


MANIFEST = _manifest()


def ported_by(test_name):
    return sorted(p for p, t in MANIFEST.items() if t == test_name)


PY_NAME = {"add": "add", "and": "and_", "compareExchange": "compare_exchange", "exchange": "exchange",
           "isLockFree": "is_lock_free", "load": "load", "notify": "notify", "or": "or_",
           "pause": "pause", "store": "store", "sub": "sub", "wait": "wait", "waitAsync": "wait_async",
           "xor": "xor"}
# JS's parameter lists, Python-spelled: what length.js pins (length = how many).
PARAMETERS = {
    "add": ["ta", "index", "value"], "and": ["ta", "index", "value"], "or": ["ta", "index", "value"],
    "sub": ["ta", "index", "value"], "xor": ["ta", "index", "value"],
    "exchange": ["ta", "index", "value"], "store": ["ta", "index", "value"],
    "compareExchange": ["ta", "index", "expected", "replacement"], "load": ["ta", "index"],
    "wait": ["ta", "index", "value", "timeout"], "waitAsync": ["ta", "index", "value", "timeout"],
    "notify": ["ta", "index", "count"], "isLockFree": ["size"], "pause": ["iterations"],
}
JS_LENGTH = {"add": 3, "and": 3, "or": 3, "sub": 3, "xor": 3, "exchange": 3, "store": 3,
             "compareExchange": 4, "load": 2, "wait": 4, "waitAsync": 4, "notify": 3,
             "isLockFree": 1, "pause": 0}
RMW = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "and": lambda a, b: a & b,
       "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b, "exchange": lambda a, b: b}
INT_VIEWS = [Int8Array, Uint8Array, Int16Array, Uint16Array, Int32Array, Uint32Array]
BIGINT_VIEWS = [BigInt64Array, BigUint64Array]
FLOAT_VIEWS = [Float32Array, Float64Array]
ALL_VIEWS = INT_VIEWS + BIGINT_VIEWS + FLOAT_VIEWS
SMALL = 0.1  # $262.agent.timeouts.small is 200 ms; ours in seconds


class Test262Error(Exception):
    __test__ = False  # test262's name, not a test class


class Poisoned:
    """A value whose conversion must not happen (test262's poisoned valueOf)."""

    def __index__(self):
        raise Test262Error("should not evaluate this code")

    __int__ = __float__ = __index__


class IntLike:
    """An int-like (numpy-integer-like) object: what Python calls __index__."""

    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


def op_of(path):
    return path.split("/", 1)[0]


def is_bigint(path):
    return "/bigint/" in path


def views_for(path, waitable=False):
    if waitable:
        return [BigInt64Array] if is_bigint(path) else [Int32Array]
    return BIGINT_VIEWS if is_bigint(path) else INT_VIEWS


def call(op, ta, index, *rest):
    """Call an Atomics op with the arguments test262 would pass (values as needed)."""
    fn = getattr(Atomics, PY_NAME[op])
    if op == "waitAsync":
        return asyncio.run(fn(ta, index, *rest))
    if op in ("wait", "notify", "load"):
        return fn(ta, index, *rest)
    if op == "compareExchange":
        return fn(ta, index, *(rest or (0, 0)))
    return fn(ta, index, *(rest or (0,)))


def wait_call(op, ta, index, value, *timeout):
    fn = getattr(Atomics, PY_NAME[op])
    if op == "waitAsync":
        return asyncio.run(fn(ta, index, value, *timeout))
    return fn(ta, index, value, *timeout)


class Waiter:
    """Another agent waiting: a thread blocked in wait / an event loop in wait_async."""

    def __init__(self, op, ta, index, value, timeout=None, done=None, tag=None):
        self.result = None
        self.duration = None

        def run():
            start = time.monotonic()
            self.result = wait_call(op, ta, index, value, timeout)
            self.duration = time.monotonic() - start
            if done is not None:
                done.append(tag)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=20):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "waiter still blocked"
        return self.result


def in_agent(fork, path, body):
    """Run body here, or in another process (a forked child) for an -agent.js file."""
    if path.endswith("-agent.js"):
        assert fork(body).join() == 0
    else:
        body()


# ---- the manifest ------------------------------------------------------------------------

def test_manifest_covers_every_upstream_file():
    assert len(MANIFEST) == UPSTREAM_FILES
    tests = {name for name in globals() if name.startswith("test_")}
    for path, target in MANIFEST.items():
        assert target.startswith("n/a: ") or target in tests, (path, target)
    ported = sum(not t.startswith("n/a") for t in MANIFEST.values())
    assert ported >= 320  # what this port covers; the rest says why not


# ---- the namespace and its functions -----------------------------------------------------

@pytest.mark.parametrize("path", ported_by("test_namespace"))
def test_namespace(path):
    # prop-desc.js: Atomics is a property of the global object -> exported by the package
    assert pyclusterc.Atomics is Atomics and pyclusterc.shared.Atomics is Atomics
    # Symbol.toStringTag.js: its tag is "Atomics" -> its name
    assert Atomics.__name__ == "Atomics" and "Atomics" in repr(Atomics)


@pytest.mark.parametrize("path", ported_by("test_parameters"))
def test_parameters(path):
    op = op_of(path)
    params = list(inspect.signature(getattr(Atomics, PY_NAME[op])).parameters)
    assert params == PARAMETERS[op]
    # JS length: the parameters before the optional ones (pause's N is optional)
    assert len(params) - (op == "pause") == JS_LENGTH[op]


@pytest.mark.parametrize("path", ported_by("test_name"))
def test_name(path):
    op = op_of(path)
    assert getattr(Atomics, PY_NAME[op]).__name__ == PY_NAME[op]


@pytest.mark.parametrize("path", ported_by("test_is_static_function"))
def test_is_static_function(path):
    op = op_of(path)
    raw = inspect.getattr_static(Atomics, PY_NAME[op])
    assert isinstance(raw, staticmethod)
    assert callable(getattr(Atomics, PY_NAME[op]))


@pytest.mark.parametrize("path", ported_by("test_not_a_constructor"))
def test_not_a_constructor(path):
    fn = getattr(Atomics, PY_NAME[op_of(path)])
    assert not isinstance(fn, type)
    with pytest.raises(TypeError):
        Atomics()


# ---- arrays, indices, values ---------------------------------------------------------------

@pytest.mark.parametrize("path", ported_by("test_bad_range"))
def test_bad_range(path):
    op = op_of(path)
    waitable = op in ("wait", "waitAsync", "notify")
    for cls in views_for(path, waitable):
        ta = cls(SharedBuffer(8 * 4), 0, 4)
        # bad-range.js's indices that are integers; the non-integers are TypeErrors here
        for index in (-1, -(2 ** 53), -(2 ** 64), len(ta), len(ta) * 2, 2 ** 53, 2 ** 64):
            with pytest.raises(IndexError):
                call(op, ta, index, 0, 0) if op in ("wait", "waitAsync") else call(op, ta, index)
        for index in (float("inf"), float("-inf"), 1.5, float("nan")):
            with pytest.raises(TypeError):
                call(op, ta, index)


@pytest.mark.parametrize("path", ported_by("test_good_views"))
def test_good_views(path):
    op = op_of(path)
    buf = SharedBuffer(1024)
    for cls in views_for(path, op == "waitAsync"):
        # non-zero byte offset and index, as upstream: view = new TA(sab, 32, 20)
        view = cls(buf, 32, 20)
        control = cls(SharedBuffer(16), 0, 2)
        if op in RMW:
            view[8] = 0
            assert call(op, view, 8, 10) == 0
            assert view[8] == view._reduce(RMW[op](0, 10))
            for v in (-5, 12345, 123456789):
                control[0] = control._reduce(v)
                view[3] = control._reduce(v)
                assert call(op, view, 3, 0 if op != "and" else -1) == control[0]
        elif op == "compareExchange":
            view[8] = 0
            assert Atomics.compare_exchange(view, 8, 0, 10) == 0
            assert view[8] == 10
            assert Atomics.compare_exchange(view, 8, 1, 5) == 10  # no swap
            assert view[8] == 10
            control[0] = control._reduce(-5)
            view[3] = control._reduce(-5)
            assert Atomics.compare_exchange(view, 3, -5, 0) == control[0]
            assert view[3] == 0
        elif op == "load":
            view[3] = view._reduce(-5)
            control[0] = control._reduce(-5)
            assert Atomics.load(view, 3) == control[0]
            view[3] = 12345
            assert Atomics.load(view, 3) == control._reduce(12345)
        elif op == "store":
            for v in (10, -5, 12345, 123456789, 2 ** 70 + 3):
                assert Atomics.store(view, 3, v) == v  # returns its input
                assert view[3] == view._reduce(v)
        elif op == "waitAsync":
            assert wait_call(op, view, 0, 0, 0) == "timed-out"
            assert wait_call(op, view, 19, 0, 0) == "timed-out"
        # in-bounds indices: 0, the last, and int-likes (upstream: "0", -0, 0.0, ...)
        for index in (0, IntLike(0), np.int64(0), len(view) - 1, IntLike(len(view) - 1)):
            if op in ("waitAsync",):
                continue
            view.store(0, 0)
            Atomics.store(view, index, 37)
            assert Atomics.load(view, index) == 37
            assert view[int(index)] == 37


@pytest.mark.parametrize("path", ported_by("test_non_views"))
def test_non_views(path):
    op = op_of(path)
    for obj in (None, 0, 1.5, "string", [0, 0, 0, 0], {}, object(), bytearray(16),
                memoryview(bytearray(16)), SharedBuffer(16), np.zeros(4, dtype=np.int32)):
        with pytest.raises(TypeError):
            call(op, obj, 0, 0, 0) if op in ("wait", "waitAsync") else call(op, obj, 0)


@pytest.mark.parametrize("path", ported_by("test_refused_element_types"))
def test_refused_element_types(path):
    op = op_of(path)
    if op in ("wait", "waitAsync", "notify"):
        allowed = {BigInt64Array} if is_bigint(path) else {Int32Array}
        refused = [c for c in ALL_VIEWS if c not in (Int32Array, BigInt64Array)]
        if is_bigint(path):
            refused = [c for c in ALL_VIEWS if c is not BigInt64Array and c is not Int32Array]
        for cls in refused:
            with pytest.raises(TypeError):
                call(op, cls(4), 0, 0, 0) if op != "notify" else call(op, cls(4), 0)
        for cls in allowed:
            call(op, cls(4), 0, 1, 0) if op != "notify" else call(op, cls(4), 0)
    else:  # shared-nonint-views.js: float arrays
        for cls in FLOAT_VIEWS:
            with pytest.raises(TypeError):
                call(op, cls(4), 0)


@pytest.mark.parametrize("path", ported_by("test_expected_return_value"))
def test_expected_return_value(path):
    op = op_of(path)
    if op == "isLockFree":
        # 4 is always lock-free; 1, 2 and 8 give a boolean that never changes
        assert Atomics.is_lock_free(4) is True
        for n in (1, 2, 8):
            first = Atomics.is_lock_free(n)
            assert isinstance(first, bool) and Atomics.is_lock_free(n) is first
        if path.endswith("negative-zero.js"):
            assert Atomics.is_lock_free(-0) is False  # -0 is 0 for ints
        return
    for cls in views_for(path):
        ta = cls(4)
        if op in RMW:
            ta[0] = 5
            assert call(op, ta, 0, 3) == 5  # the old value
            assert ta[0] == ta._reduce(RMW[op](5, 3))
        elif op == "compareExchange":
            ta[0] = 5
            assert Atomics.compare_exchange(ta, 0, 5, 7) == 5 and ta[0] == 7
        elif op == "load":
            ta[0] = 5
            assert Atomics.load(ta, 0) == 5
        elif op == "store":
            # expected-return-value(-negative-zero).js: the input value, not the stored one
            assert Atomics.store(ta, 0, 2 ** 70) == 2 ** 70 and ta[0] == 0
            assert Atomics.store(ta, 0, -0) == 0


@pytest.mark.parametrize("path", ported_by("test_array_type_checked_first"))
def test_array_type_checked_first(path):
    op = op_of(path)
    poison = Poisoned()
    # validate-arraytype-before-{index,value,timeout,count,expectedValue,
    # replacementValue}-coercion.js: a wrong array is refused before any argument
    # is converted (the poison is never called)
    bad = [c for c in ALL_VIEWS if c not in ((Int32Array, BigInt64Array)
                                               if op in ("wait", "waitAsync", "notify")
                                               else INT_VIEWS + BIGINT_VIEWS)]
    for cls in bad:
        ta = cls(SharedBuffer(8))
        with pytest.raises(TypeError):
            if op in ("wait", "waitAsync"):
                wait_call(op, ta, poison, poison, poison)
            elif op == "notify":
                Atomics.notify(ta, poison, poison)
            elif op == "compareExchange":
                Atomics.compare_exchange(ta, poison, poison, poison)
            elif op == "load":
                Atomics.load(ta, poison)
            else:
                call(op, ta, poison, poison)
    # and with a good array, the order is index, then value, then timeout (or count)
    good = BigInt64Array(4) if op in ("wait", "waitAsync") and False else Int32Array(4)
    if op in ("wait", "waitAsync"):
        with pytest.raises(IndexError):
            wait_call(op, good, 99, poison, poison)
        with pytest.raises(Test262Error):
            wait_call(op, good, poison, 0, "bad timeout")
        with pytest.raises(Test262Error):
            wait_call(op, good, 0, poison, "bad timeout")
        with pytest.raises(TypeError):
            wait_call(op, good, 0, 0, "bad timeout")
    elif op == "notify":
        with pytest.raises(IndexError):
            Atomics.notify(good, 99, poison)


@pytest.mark.parametrize("path", ported_by("test_non_integer_index"))
def test_non_integer_index(path, fork):
    op = op_of(path)

    def body():
        for cls in views_for(path, op in ("wait", "waitAsync", "notify")):
            ta = cls(4)
            # symbol-for-index-throws.js: a Symbol cannot become an index -> nor can
            # an object; undefined-index-defaults-to-zero.js: JS turns undefined into
            # 0, Python refuses None as an index
            for index in (object(), None, "0", 1.0):
                with pytest.raises(TypeError):
                    wait_call(op, ta, index, 0, 0) if op != "notify" else Atomics.notify(ta, index)
            # a bool is an int in Python, and ToIndex(true) is 1 in JS: both agree
            assert (wait_call(op, ta, True, 0, 0) if op != "notify" else Atomics.notify(ta, True)) in (
                "timed-out", 0)
            with pytest.raises(Test262Error):
                wait_call(op, ta, Poisoned(), 0, 0) if op != "notify" else Atomics.notify(ta, Poisoned())

    in_agent(fork, path, body)


@pytest.mark.parametrize("path", ported_by("test_non_integer_value"))
def test_non_integer_value(path, fork):
    op = op_of(path)

    def body():
        for cls in views_for(path, True):
            ta = cls(4)
            for value in (object(), None, "0", 1.5):
                with pytest.raises(TypeError):
                    wait_call(op, ta, 0, value, 0)
            with pytest.raises(Test262Error):
                wait_call(op, ta, 0, Poisoned(), 0)
            assert wait_call(op, ta, 0, IntLike(0), 0) == "timed-out"  # int-likes convert

    in_agent(fork, path, body)


@pytest.mark.parametrize("path", ported_by("test_timeout_conversion"))
def test_timeout_conversion(path, fork):
    op = op_of(path)
    name = path.rsplit("/", 1)[1].replace("-agent.js", ".js")

    def body():
        for cls in views_for(path, True):
            ta = cls(4)
            if name in ("false-for-timeout.js", "true-for-timeout.js", "symbol-for-timeout-throws.js"):
                # JS coerces true/false to 1/0 ms and throws on a Symbol; a Python bool
                # or any non-number is refused
                for timeout in (True, False, object(), "0"):
                    with pytest.raises(TypeError):
                        wait_call(op, ta, 0, 0, timeout)
            elif name == "poisoned-object-for-timeout-throws.js":
                with pytest.raises(Test262Error):
                    wait_call(op, ta, 0, 0, Poisoned())
            elif name == "object-for-timeout.js":
                # objects that convert to a number: int-likes and real numbers
                for timeout in (IntLike(0), np.int64(0), np.float64(0.0), fractions.Fraction(0)):
                    assert wait_call(op, ta, 0, 0, timeout) == "timed-out"
                start = time.monotonic()
                assert wait_call(op, ta, 0, 0, fractions.Fraction(1, 20)) == "timed-out"
                assert time.monotonic() - start >= 0.05
            elif name == "negative-timeout.js":
                for timeout in (-5, -0.001, float("-inf"), IntLike(-1)):
                    assert wait_call(op, ta, 0, 0, timeout) == "timed-out"
            elif name in ("null-for-timeout.js", "undefined-for-timeout.js", "nan-for-timeout.js",
                          "implicit-infinity-for-timeout.js"):
                # null (JS: 0) is Python's None, which like undefined, NaN and no
                # timeout at all means forever: only a notify ends the wait
                args = {"null-for-timeout.js": (None,), "undefined-for-timeout.js": (None,),
                        "nan-for-timeout.js": (float("nan"),),
                        "implicit-infinity-for-timeout.js": ()}[name]
                results = []
                t = threading.Thread(target=lambda: results.append(wait_call(op, ta, 0, 0, *args)))
                t.start()
                wait_for_waiters(ta, 0, 1)
                time.sleep(SMALL)
                assert t.is_alive()  # still waiting: no timeout
                assert Atomics.notify(ta, 0) == 1
                t.join(20)
                assert results == ["ok"]
            else:
                raise AssertionError(f"no translation for {name}")

    in_agent(fork, path, body)


@pytest.mark.parametrize("path", ported_by("test_buffer_cannot_be_detached"))
def test_buffer_cannot_be_detached(path):
    # null-bufferdata-throws.js detaches the buffer, then expects TypeError before
    # any argument is converted. A SharedBuffer cannot be detached under a view:
    # close() raises BufferError, and the view keeps working.
    op = op_of(path)
    cls = views_for(path, True)[0]
    buf = SharedBuffer(16)
    ta = cls(buf)
    with pytest.raises(BufferError):
        buf.close()
    assert (Atomics.notify(ta, 0) if op == "notify" else wait_call(op, ta, 0, 0, 0)) in (0, "timed-out")
    del ta
    buf.close()
    with pytest.raises(ValueError):
        cls(buf)


# ---- wait / wait_async results ---------------------------------------------------------------

@pytest.mark.parametrize("path", ported_by("test_value_not_equal"))
def test_value_not_equal(path, fork):
    op = op_of(path)

    def body():
        for cls in views_for(path, True):
            ta = cls(4)
            ta.store(0, 42)
            assert wait_call(op, ta, 0, 0) == "not-equal"
            assert wait_call(op, ta, 0, 41, None) == "not-equal"
            assert wait_call(op, ta, 0, 42 + (1 << (8 * ta.BYTES_PER_ELEMENT)), 0) == "timed-out"
            # wait-index-value-not-equal.js: the index's own value is what is compared
            ta.store(1, 7)
            assert wait_call(op, ta, 1, 0) == "not-equal"
            assert waiters(ta, 0) == 0 and waiters(ta, 1) == 0

    in_agent(fork, path, body)


@pytest.mark.parametrize("path", ported_by("test_timed_out"))
def test_timed_out(path):
    op = op_of(path)
    ta = Int32Array(4)
    assert wait_call(op, ta, 0, 0, 0) == "timed-out"
    start = time.monotonic()
    assert wait_call(op, ta, 0, 0, SMALL) == "timed-out"
    assert time.monotonic() - start >= SMALL
    assert waiters(ta, 0) == 0


@pytest.mark.parametrize("path", ported_by("test_woken_before_timeout"))
def test_woken_before_timeout(path, fork):
    op = op_of(path)
    for cls in views_for(path, True):
        ta = cls(4)
        w = Waiter(op, ta, 0, 0, timeout=30)
        wait_for_waiters(ta, 0, 1)
        # the notifier is another process
        assert fork(lambda: 0 if Atomics.notify(ta, 0) == 1 else 1).join() == 0
        assert w.join() == "ok"
        assert w.duration < 30


@pytest.mark.parametrize("path", ported_by("test_no_spurious_wakeup"))
def test_no_spurious_wakeup(path):
    op = op_of(path)
    what = path.rsplit("no-spurious-wakeup-", 1)[1][:-3]
    for cls in views_for(path, True):
        ta = cls(4)
        w = Waiter(op, ta, 0, 0, timeout=SMALL)
        wait_for_waiters(ta, 0, 1)
        # change the cell (or do nothing) without a notify: the waiter times out
        if what.startswith("on-"):
            change = what[3:]
            if change == "compareExchange":
                Atomics.compare_exchange(ta, 0, 0, 1)
            elif change == "store":
                Atomics.store(ta, 0, 1)
            else:
                getattr(Atomics, PY_NAME[change])(ta, 0, 1)
        assert w.join() == "timed-out"
        assert w.duration >= SMALL
        assert Atomics.notify(ta, 0) == 0


@pytest.mark.parametrize("path", ported_by("test_only_that_position_wakes"))
def test_only_that_position_wakes(path):
    op = "wait" if op_of(path) == "notify" else op_of(path)
    for cls in views_for(path, True):
        ta = cls(5)
        if path.endswith("notify-all-on-loc.js"):
            # three waiters on index 0, one on index 1: notify(0) wakes exactly three
            ws = [Waiter(op, ta, 0, 0, timeout=20) for _ in range(3)]
            other = Waiter(op, ta, 1, 0, timeout=20)
            wait_for_waiters(ta, 0, 3)
            wait_for_waiters(ta, 1, 1)
            assert Atomics.notify(ta, 0) == 3
            assert [w.join() for w in ws] == ["ok"] * 3
            assert waiters(ta, 1) == 1
            assert Atomics.notify(ta, 1) == 1 and other.join() == "ok"
        else:
            w0 = Waiter(op, ta, 0, 0, timeout=None)
            w2 = Waiter(op, ta, 2, 0, timeout=None)
            wait_for_waiters(ta, 0, 1)
            wait_for_waiters(ta, 2, 1)
            assert Atomics.notify(ta, 1) == 0
            assert Atomics.notify(ta, 3) == 0
            assert Atomics.notify(ta, 2) == 1 and w2.join() == "ok"
            assert Atomics.notify(ta, 0) == 1 and w0.join() == "ok"


@pytest.mark.parametrize("path", ported_by("test_fifo"))
def test_fifo(path):
    op = "wait" if op_of(path) == "notify" else op_of(path)
    for cls in views_for(path, True):
        ta = cls(4)
        woken, ws = [], []
        for tag in range(3):  # they start waiting in this order
            ws.append(Waiter(op, ta, 0, 0, timeout=20, done=woken, tag=tag))
            wait_for_waiters(ta, 0, tag + 1)
        for n in range(3):  # notify(1) wakes the oldest each time
            assert Atomics.notify(ta, 0, 1) == 1
            poll(lambda: len(woken) == n + 1, what=f"waiter {n} to wake")
        assert woken == [0, 1, 2]
        assert [w.join() for w in ws] == ["ok"] * 3
        assert Atomics.notify(ta, 0, 1) == 0


# ---- notify's count --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ported_by("test_notify_count"))
def test_notify_count(path):
    name = path.rsplit("/", 1)[1]
    ta = Int32Array(4)
    if name in ("notify-with-no-agents-waiting.js", "count-boundary-cases.js"):
        for count in (-3, 2 ** 70, None, 0, 33, IntLike(8), np.int32(8)):
            assert Atomics.notify(ta, 0, count) == 0
        assert Atomics.notify(ta, 0) == 0
        return
    if name in ("count-from-nans.js", "notify-nan.js", "count-symbol-throws.js"):
        # JS turns NaN into 0 and throws on a Symbol; Python refuses non-integers
        for count in (float("nan"), 1.0, object(), "1", True):
            with pytest.raises(TypeError):
                Atomics.notify(ta, 0, count)
        return
    ws = [Waiter("wait", ta, 0, 0, timeout=20) for _ in range(4)]
    wait_for_waiters(ta, 0, 4)
    if name == "count-tointeger-throws-then-wake-throws.js":
        with pytest.raises(Test262Error):
            Atomics.notify(ta, 0, Poisoned())
        assert waiters(ta, 0) == 4  # nobody woken by the failed call
        expected = {"rest": 4}
    elif name == "notify-with-no-matching-agents-waiting.js":
        assert Atomics.notify(ta, 1) == 0
        expected = {"rest": 4}
    elif name in ("notify-zero.js", "negative-count.js"):
        assert Atomics.notify(ta, 0, 0 if name == "notify-zero.js" else -5) == 0
        expected = {"rest": 4}
    elif name == "notify-one.js":
        assert Atomics.notify(ta, 0, 1) == 1
        expected = {"rest": 3}
    elif name == "notify-two.js":
        assert Atomics.notify(ta, 0, 2) == 2
        expected = {"rest": 2}
    elif name in ("notify-all.js", "count-defaults-to-infinity-missing.js"):
        assert Atomics.notify(ta, 0) == 4
        expected = {"rest": 0}
    elif name == "count-defaults-to-infinity-undefined.js":
        assert Atomics.notify(ta, 0, None) == 4
        expected = {"rest": 0}
    elif name == "notify-renotify-noop.js":
        assert Atomics.notify(ta, 0) == 4
        assert Atomics.notify(ta, 0) == 0
        expected = {"rest": 0}
    else:
        raise AssertionError(f"no translation for {name}")
    poll(lambda: waiters(ta, 0) == expected["rest"], what="the woken to leave")
    assert Atomics.notify(ta, 0) == expected["rest"]
    assert [w.join() for w in ws] == ["ok"] * 4


# ---- is_lock_free, pause ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ported_by("test_is_lock_free_corner_cases"))
def test_is_lock_free_corner_cases(path):
    for size in (3, 0, -1, 16, 2 ** 70):
        assert Atomics.is_lock_free(size) is False
    # objects that convert: JS's {valueOf: () => 1}, here __index__ (numpy integers)
    for n in (1, 2, 3, 4, 8):
        assert Atomics.is_lock_free(IntLike(n)) is Atomics.is_lock_free(n)
        assert Atomics.is_lock_free(np.int64(n)) is Atomics.is_lock_free(n)
        assert Atomics.is_lock_free(np.uint8(n)) is Atomics.is_lock_free(n)
    # JS coerces '1', true, NaN and 3.14; Python refuses them
    for size in ("1", True, float("nan"), 3.14, None):
        with pytest.raises(TypeError):
            Atomics.is_lock_free(size)


@pytest.mark.parametrize("path", ported_by("test_pause_returns_none"))
def test_pause_returns_none(path):
    assert Atomics.pause() is None
    assert Atomics.pause(10) is None
    assert Atomics.pause(np.int32(3)) is None
    with pytest.raises(TypeError):
        Atomics.pause(1.5)
