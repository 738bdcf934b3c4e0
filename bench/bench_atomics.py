#!/usr/bin/env python3
"""Atomics and shared memory: pyclusterc beside its peers, measured in one run.

    python bench/bench_atomics.py            # full run: writes bench/results/atomics.json
                                             # and the tables in bench/results/atomics.md
    python bench/bench_atomics.py --quick    # smoke run: prints, writes nothing
    python bench/bench_atomics.py --only adaptive --before-python OLD/.venv/bin/python
                                             # wait/notify and hand-offs pinned to one CPU
                                             # and on two, beside a raw futex, Node and
                                             # (optional) another pyclusterc build

The `adaptive` step runs every cross-process hand-off twice: with this process (and so
both sides, which inherit its affinity, and Node) pinned to one CPU, and on two CPUs.

The machine is small and shared, so every figure is the median of several
repetitions, and within each repetition the candidates run in a shuffled order
(peers interleaved), so that a noisy moment does not land on one side only.
Cross-process figures use os.fork (Linux).
"""
import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import json
import mmap
import multiprocessing
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import timeit
import traceback

import pyclusterc
from pyclusterc import Atomics, BigInt64Array, Int32Array, Mutex, Semaphore, SharedBuffer
from pyclusterc.shared import atomics as pc_atomics
from pyclusterc.shared import sync as pc_sync
from pyclusterc._native import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "atomics.json")
TABLES = os.path.join(ROOT, "bench", "results", "atomics.md")
NODE_PINGPONG = os.path.join(ROOT, "bench", "node", "pingpong.js")
NODE_ADD = os.path.join(ROOT, "bench", "node", "add.js")

# ---- Linux futex through ctypes (the raw peers) -----------------------------------
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}[platform.machine()]
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # not FUTEX_PRIVATE_FLAG: the word is shared across processes
# Python-level polls of the cell before the spin-then-futex peer sleeps (~0.1 ms).
CTYPES_SPIN = 2000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_libc.abs.argtypes = [ctypes.c_int]
_libc.abs.restype = ctypes.c_int
_libatomic = ctypes.CDLL(ctypes.util.find_library("atomic") or "libatomic.so.1")
_fetch_add_4 = _libatomic.__atomic_fetch_add_4
_fetch_add_4.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
_fetch_add_4.restype = ctypes.c_uint32
_SEQ_CST = 5


class _Futex:
    """A 32-bit word in an anonymous MAP_SHARED page, shared with forked children."""

    def __init__(self, words=1):
        self.page = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS
        self.cells = (ctypes.c_int32 * words).from_buffer(self.page)
        self.base = ctypes.addressof(self.cells)

    def address(self, i):
        return self.base + 4 * i

    @staticmethod
    def wait(address, expected, timeout=None):
        return _syscall(SYS_FUTEX, address, FUTEX_WAIT, expected, timeout, None, 0)

    @staticmethod
    def wake(address, count=1):
        return _syscall(SYS_FUTEX, address, FUTEX_WAKE, count, None, None, 0)


# ---- helpers ------------------------------------------------------------------------

def median(values):
    return statistics.median(values)


def _fork(child):
    """Fork a child that runs child() and exits; a watchdog alarm bounds it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(300)
            child()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _reap(pids, timeout=60.0):
    """Wait for the children; kill any still running after timeout (also on errors)."""
    deadline = time.monotonic() + timeout
    failed = []
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status) != 0:
                    failed.append(pid)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                failed.append(pid)
                break
            time.sleep(0.002)
    if failed:
        raise RuntimeError(f"bench child process(es) {failed} failed")


@contextlib.contextmanager
def children(*targets):
    """Fork one child per target; always reap (or kill) them, even on failure."""
    pids = []
    try:
        for target in targets:
            pids.append(_fork(target))
        yield pids
    except BaseException:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            _reap(pids, 5)
        raise
    _reap(pids)


@contextlib.contextmanager
def watchdog(seconds):
    """Raise TimeoutError in the parent if a measurement hangs (waits are EINTR-aware)."""
    def expire(*_):
        raise TimeoutError(f"benchmark step took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _sleeps():
    """Voluntary context switches so far of this process and its reaped children: a
    blocking wait that really sleeps in the kernel is one; a spin that catches the
    hand-off is none."""
    return sum(resource.getrusage(who).ru_nvcsw
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def timed_with_sleeps(run, n):
    """run(n) -> µs per round trip; returns (µs, sleeps per round trip, both sides)."""
    before = _sleeps()
    us = run(n)
    return us, (_sleeps() - before) / n


def round_trip_summary(samples, n):
    """{name: [(µs, sleeps)]} -> medians and raw samples."""
    return {
        "round_trips": n,
        "us_per_round_trip": {k: median(u for u, _ in v) for k, v in samples.items()},
        # The quietest repetition: what the mechanism costs when both sides have a CPU.
        "best_us_per_round_trip": {k: min(u for u, _ in v) for k, v in samples.items()},
        "sleeps_per_round_trip": {k: median(z for _, z in v) for k, v in samples.items()},
        "samples_us": {k: [u for u, _ in v] for k, v in samples.items()},
    }


def interleaved(candidates, reps, measure):
    """Run measure(name) for every candidate, reps times, in a new shuffled order each
    repetition; returns {name: [samples]}."""
    samples = {name: [] for name in candidates}
    names = list(candidates)
    for _ in range(reps):
        random.shuffle(names)
        for name in names:
            samples[name].append(measure(name))
    return samples


# ---- 1. one atomic add from Python ---------------------------------------------------

def single_op(reps, batch_seconds):
    import atomics  # the PyPI package, a peer (pyproject's `bench` extra)
    ta = Int32Array(4)
    ptr = ta._ptr
    mp_value = multiprocessing.Value("i", 0)
    page = mmap.mmap(-1, mmap.PAGESIZE)
    stack = contextlib.ExitStack()
    view = stack.enter_context(atomics.atomicview(buffer=memoryview(page)[:4], atype=atomics.INT))
    ctypes_cell = ctypes.c_int32.from_buffer(page, 8)
    ctypes_address = ctypes.addressof(ctypes_cell)
    namespace = {
        "ta": ta, "Atomics": Atomics, "lib": lib, "p": ptr, "v": mp_value, "view": view,
        "fetch_add": _fetch_add_4, "addr": ctypes_address, "SEQ_CST": _SEQ_CST,
        "abs": _libc.abs,
    }
    statements = {
        "method": "ta.add(0, 1)",
        "atomics_fn": "Atomics.add(ta, 0, 1)",
        "bare_cffi": "lib.pc_add_i32(p, 0, 1)",
        # cffi's default wrapper (GIL released, errno saved), which pc_add_i32 no longer
        # uses: pc_sem_value is one atomic load behind that wrapper.
        "default_cffi": "lib.pc_sem_value(p)",
        "mp_value_lock": "with v.get_lock(): v.value += 1",
        "atomics_pkg": "view.fetch_add(1)",
        "ctypes_libatomic": "fetch_add(addr, 1, SEQ_CST)",
        "ctypes_libc_abs": "abs(1)",
        "empty_loop": "pass",
    }
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in statements.items()}
    node_ops = int(2e8 * batch_seconds)
    # Size each batch to about batch_seconds so slow and fast candidates get equal time.
    numbers = {}
    for name, timer in timers.items():
        n, took = timer.autorange()
        numbers[name] = max(1000, int(n * batch_seconds / took))

    def measure(name):
        if name == "node_atomics_add":
            return node_run(NODE_ADD, node_ops)["ns_per_op"]
        return timers[name].timeit(numbers[name]) / numbers[name] * 1e9

    with stack:
        samples = interleaved([*statements, "node_atomics_add"], reps, measure)
    del ctypes_cell  # kept alive until here: it pins the page that addr points into
    ns = {name: median(values) for name, values in samples.items()}
    return {
        "statements": {**statements, "node_atomics_add": "Atomics.add(ta, 0, 1) in bench/node/add.js (JIT)"},
        "ns_per_op": ns,
        "ops_per_batch": {**numbers, "node_atomics_add": node_ops},
        "samples_ns": samples,
    }


# ---- 2. two processes incrementing one counter --------------------------------------

def _counter_run(kind, n):
    """Two forked processes each add 1 n times to one counter; returns (ops/s, exact,
    final count, parallelism)."""
    # control: [0] ready count, [1] go; times: per child start, end (CLOCK_MONOTONIC ns)
    # and CPU time used, to tell whether the two really ran at the same time.
    control = Int32Array(2)
    times = BigInt64Array(6)
    if kind == "pyclusterc":
        counter = Int32Array(1)

        def work():
            ta = counter
            for _ in range(n):
                ta.add(0, 1)

        def total():
            return counter.load(0)
    else:
        value = multiprocessing.Value("i", 0)

        def work():
            v = value
            for _ in range(n):
                with v.get_lock():
                    v.value += 1

        def total():
            return value.value

    def child(k):
        def run():
            control.add(0, 1)
            while control.load(1) == 0:
                Atomics.pause(100)
            cpu = time.thread_time_ns()
            times.store(2 * k, time.monotonic_ns())
            work()
            times.store(2 * k + 1, time.monotonic_ns())
            times.store(4 + k, time.thread_time_ns() - cpu)
        return run

    with children(child(0), child(1)):
        while control.load(0) < 2:
            time.sleep(0.001)
        control.store(1, 1)
    elapsed = max(times[1], times[3]) - min(times[0], times[2])
    return 2 * n / (elapsed / 1e9), total() == 2 * n, total(), (times[4] + times[5]) / elapsed


def two_process_counter(reps, n):
    exact = {"pyclusterc": True, "mp_value_lock": True}
    finals = {}
    parallelism = {kind: [] for kind in exact}

    def measure(kind):
        ops, ok, final, both = _counter_run(kind, n)
        exact[kind] &= ok
        finals[kind] = final
        parallelism[kind].append(both)
        return ops

    samples = interleaved(exact, reps, measure)
    return {
        "increments_per_process": n,
        "ops_per_s": {k: median(v) for k, v in samples.items()},
        # CPU time of both processes ÷ wall time: 2.0 = they always ran at once (the
        # counter was contended), 1.0 = they took turns (CPUs busy, or a lock sleep).
        "parallelism": {k: median(v) for k, v in parallelism.items()},
        "exact": exact,
        "last_final_count": finals,
        "samples_ops_per_s": samples,
    }


# ---- 3. cross-process ping-pong -------------------------------------------------------
# Protocol everywhere: the parent sets a cell to 1 and wakes the child; the child
# waits for 1, sets 0 and wakes the parent. One round trip = one exchange each way.

def _pingpong(parent_loop, child_loop, n):
    """Fork child_loop(n); time parent_loop(n) once the child is ready; µs/round trip."""
    ready_r, ready_w = os.pipe()

    def child():
        os.close(ready_r)
        os.write(ready_w, b"r")
        child_loop(n)

    with children(child):
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        start = time.perf_counter_ns()
        parent_loop(n)
        elapsed = time.perf_counter_ns() - start
    return elapsed / n / 1000


def pingpong_pyclusterc(n):
    ta = Int32Array(2)

    def parent(n):
        for _ in range(n):
            ta.store(0, 1)
            Atomics.notify(ta, 0, 1)
            while ta.load(0) == 1:
                Atomics.wait(ta, 0, 1)

    def child(n):
        for _ in range(n):
            while ta.load(0) == 0:
                Atomics.wait(ta, 0, 0)
            ta.store(0, 0)
            Atomics.notify(ta, 0, 1)

    return _pingpong(parent, child, n)


def pingpong_raw_futex(n):
    """FUTEX_WAIT/FUTEX_WAKE syscalls through ctypes, no spinning, a wake every time."""
    futex = _Futex()
    cells, address = futex.cells, futex.address(0)
    wait, wake = futex.wait, futex.wake

    def parent(n):
        for _ in range(n):
            cells[0] = 1
            wake(address)
            while cells[0] == 1:
                wait(address, 1)

    def child(n):
        for _ in range(n):
            while cells[0] == 0:
                wait(address, 0)
            cells[0] = 0
            wake(address)

    return _pingpong(parent, child, n)


def pingpong_spin_futex(n):
    """Poll the cell CTYPES_SPIN times, then FUTEX_WAIT; a waker calls FUTEX_WAKE only
    when the other side announced it sleeps. ctypes stores are not seq_cst, so a wake
    could in theory be missed between announce and sleep: the sleep is bounded (1 ms)."""
    futex = _Futex(words=3)  # [0] cell, [1] parent sleeps, [2] child sleeps
    cells, address = futex.cells, futex.address(0)
    wait, wake = futex.wait, futex.wake
    bound = ctypes.byref(_Timespec(0, 1_000_000))

    def await_change(old, mine):
        for _ in range(CTYPES_SPIN):
            if cells[0] != old:
                return
        cells[mine] = 1
        while cells[0] == old:
            wait(address, old, bound)
        cells[mine] = 0

    def set_and_wake(new, theirs):
        cells[0] = new
        if cells[theirs]:
            wake(address)

    def parent(n):
        for _ in range(n):
            set_and_wake(1, 2)
            await_change(1, 1)

    def child(n):
        for _ in range(n):
            await_change(0, 2)
            set_and_wake(0, 1)

    return _pingpong(parent, child, n)


def pingpong_mp_pipe(n):
    here, there = multiprocessing.Pipe()

    def parent(n):
        for _ in range(n):
            here.send_bytes(b"1")
            here.recv_bytes()

    def child(n):
        for _ in range(n):
            there.recv_bytes()
            there.send_bytes(b"0")

    return _pingpong(parent, child, n)


def node_run(script, *args):
    out = subprocess.run(["node", script, *map(str, args)], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pingpong_node(n):
    return node_run(NODE_PINGPONG, n)["us_per_round_trip"]


def wait_notify_calls(reps, batch_seconds):
    """What one side of a ping-pong spends in calls that never sleep (one process)."""
    ta = Int32Array(2)
    statements = {
        "notify_no_waiter": "Atomics.notify(ta, 0, 1)",
        "wait_not_equal": "Atomics.wait(ta, 0, 1)",
        "wait_timeout_0": "Atomics.wait(ta, 0, 0, 0)",
        "load": "ta.load(0)",
        "store": "ta.store(0, 0)",
    }
    timers = {name: timeit.Timer(stmt, globals={"ta": ta, "Atomics": Atomics})
              for name, stmt in statements.items()}
    numbers = {}
    for name, timer in timers.items():
        n, took = timer.autorange()
        numbers[name] = max(1000, int(n * batch_seconds / took))
    samples = interleaved(statements, reps,
                          lambda name: timers[name].timeit(numbers[name]) / numbers[name] * 1e9)
    return {"statements": statements, "ns_per_op": {k: median(v) for k, v in samples.items()},
            "samples_ns": samples}


PINGPONGS = {
    "pyclusterc": pingpong_pyclusterc,
    "ctypes_raw_futex": pingpong_raw_futex,
    "ctypes_spin_futex": pingpong_spin_futex,
    "mp_pipe": pingpong_mp_pipe,
    "node_worker_threads": pingpong_node,
}


def pingpong(reps, n):
    samples = interleaved(PINGPONGS, reps, lambda name: timed_with_sleeps(PINGPONGS[name], n))
    return round_trip_summary(samples, n)


# ---- 4. Mutex and Semaphore ------------------------------------------------------------

def lock_uncontended(reps, batch_seconds):
    buf = SharedBuffer(64)
    mutex = Mutex(buf, 0)
    namespace = {"m": mutex, "t": threading.Lock(), "q": multiprocessing.Lock()}
    statements = {
        "pyclusterc_mutex": "m.acquire(); m.release()",
        "pyclusterc_mutex_with": "with m: pass",
        "threading_lock": "t.acquire(); t.release()",
        "mp_lock": "q.acquire(); q.release()",
    }
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in statements.items()}
    numbers = {}
    for name, timer in timers.items():
        n, took = timer.autorange()
        numbers[name] = max(1000, int(n * batch_seconds / took))
    samples = interleaved(statements, reps,
                          lambda name: timers[name].timeit(numbers[name]) / numbers[name] * 1e9)
    return {"statements": statements, "ns_per_op": {k: median(v) for k, v in samples.items()},
            "samples_ns": samples}


def _handoff(make_pair, n):
    """Two binary gates, both closed: parent opens `ping` and takes `pong`; the child
    takes `ping` and opens `pong`. µs per round trip."""
    ping, pong = make_pair()

    def parent(n):
        for _ in range(n):
            ping.release()
            pong.acquire()

    def child(n):
        for _ in range(n):
            ping.acquire()
            pong.release()

    return _pingpong(parent, child, n)


def _mutex_pair():
    buf = SharedBuffer(64)
    ping, pong = Mutex(buf, 0), Mutex(buf, 4)
    ping.acquire()
    pong.acquire()
    return ping, pong


def _semaphore_pair():
    buf = SharedBuffer(64)
    return Semaphore(buf, 0, 0), Semaphore(buf, 8, 0)


def _mp_semaphore_pair():
    return multiprocessing.Semaphore(0), multiprocessing.Semaphore(0)


HANDOFFS = {
    "pyclusterc_mutex": _mutex_pair,
    "pyclusterc_semaphore": _semaphore_pair,
    "mp_semaphore": _mp_semaphore_pair,
}


def handoff(reps, n):
    samples = interleaved(HANDOFFS, reps,
                          lambda name: timed_with_sleeps(lambda n: _handoff(HANDOFFS[name], n), n))
    return round_trip_summary(samples, n)


# ---- 5. waits that adapt: one CPU and two CPUs -------------------------------------------
# Every cross-process hand-off, with both sides pinned to one CPU (this process's
# affinity, inherited by the forked side and by Node) and on two CPUs. The raw futex
# loop is the floor: a wait that sleeps at once and a wake every time.

ADAPTIVE = {
    "pyclusterc_wait_notify": pingpong_pyclusterc,
    "raw_futex": pingpong_raw_futex,
    "node_wait_notify": pingpong_node,
    "pyclusterc_mutex": lambda n: _handoff(_mutex_pair, n),
    "pyclusterc_semaphore": lambda n: _handoff(_semaphore_pair, n),
}
# Measured by another interpreter (--before-python: an older pyclusterc build), this
# very script run with --one NAME, so both builds run in one session, interleaved.
BEFORE = {"before_wait_notify": "pyclusterc_wait_notify", "before_mutex": "pyclusterc_mutex",
          "before_semaphore": "pyclusterc_semaphore"}


@contextlib.contextmanager
def pinned(config):
    """one_cpu: this process (and what it forks or runs) on the first usable CPU."""
    before = os.sched_getaffinity(0)
    if config == "one_cpu":
        os.sched_setaffinity(0, {min(before)})
    try:
        yield sorted(os.sched_getaffinity(0))
    finally:
        os.sched_setaffinity(0, before)


def _before_run(python, name, n):
    out = subprocess.run([python, os.path.abspath(__file__), "--one", name, "--round-trips", str(n)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def adaptive(reps, n, before_python=None):
    candidates = dict(ADAPTIVE)
    if before_python:
        for key, name in BEFORE.items():
            candidates[key] = None
    out = {"round_trips": n, "before_python": before_python}
    for config in ("one_cpu", "two_cpus"):
        with pinned(config) as cpus:
            def measure(name):
                if name in BEFORE:
                    got = _before_run(before_python, BEFORE[name], n)
                    return got["us"], got["sleeps"]
                return timed_with_sleeps(ADAPTIVE[name], n)
            samples = interleaved(candidates, reps, measure)
        out[config] = dict(round_trip_summary(samples, n), cpus=cpus)
    return out


def run_one(name, n):
    """--one: one measurement, as a JSON line (for another build's interpreter)."""
    us, sleeps = timed_with_sleeps(ADAPTIVE[name], n)
    print(json.dumps({"name": name, "us": us, "sleeps": sleeps,
                      "pyclusterc": getattr(pyclusterc, "__file__", "")}))


def adaptive_ratios(a):
    """ours / peer for every config (below 1 = pyclusterc faster)."""
    ratios = {}
    for config in ("one_cpu", "two_cpus"):
        us = a[config]["us_per_round_trip"]
        for ours in ("pyclusterc_wait_notify", "pyclusterc_mutex", "pyclusterc_semaphore"):
            ratios[f"{config}_{ours}_over_raw_futex"] = us[ours] / us["raw_futex"]
        ratios[f"{config}_pyclusterc_wait_notify_over_node"] = us["pyclusterc_wait_notify"] / us["node_wait_notify"]
        for key, ours in BEFORE.items():
            if key in us:
                ratios[f"{config}_{ours}_over_{key}"] = us[ours] / us[key]
    return ratios


def adaptive_markdown(a, ratios, reps):
    lines = [
        f"### Waits that adapt: one CPU and two CPUs, {a['round_trips']:,} round trips",
        "",
        "Each hand-off runs with both processes pinned to one CPU (`sched_setaffinity` of the "
        "bench, inherited by the forked side and by Node: the `taskset -c 0` case) and on two CPUs. "
        "A round trip is one hand-off each way (ping-pong for wait/notify; two gates for "
        "Mutex/Semaphore). The raw futex is a ctypes `FUTEX_WAIT`/`FUTEX_WAKE` loop with no spin. "
        + ("`before` is the build before this change (`--before-python`), run in the same session, "
           "interleaved. " if a.get("before_python") else "")
        + f"Median of {reps} repetitions, shuffled order; sleeps = voluntary context switches of "
        "both sides per round trip.",
        "",
        "| hand-off | one CPU µs | ÷ raw futex | sleeps | two CPUs µs | ÷ raw futex | sleeps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("pyclusterc `Atomics.wait`/`notify`", "pyclusterc_wait_notify"),
            ("pyclusterc `Mutex` pair", "pyclusterc_mutex"),
            ("pyclusterc `Semaphore` pair", "pyclusterc_semaphore")]
    if a.get("before_python"):
        rows += [("before: `Atomics.wait`/`notify`", "before_wait_notify"),
                 ("before: `Mutex` pair", "before_mutex"), ("before: `Semaphore` pair", "before_semaphore")]
    rows += [("raw futex (ctypes)", "raw_futex"), ("Node 20 `Atomics.wait`/`notify`, worker threads", "node_wait_notify")]
    one, two = a["one_cpu"], a["two_cpus"]
    for label, key in rows:
        cells = []
        for r in (one, two):
            us = r["us_per_round_trip"][key]
            cells += [fmt(us), f"{us / r['us_per_round_trip']['raw_futex']:.2f}",
                      f"{r['sleeps_per_round_trip'][key]:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if a.get("before_python"):
        lines += ["", "| this build ÷ before | one CPU | two CPUs |", "|---|---:|---:|"]
        for key, ours in BEFORE.items():
            lines.append(f"| {ours.replace('pyclusterc_', '')} | {ratios[f'one_cpu_{ours}_over_{key}']:.2f} | "
                         f"{ratios[f'two_cpus_{ours}_over_{key}']:.2f} |")
    return "\n".join(lines) + "\n"


# ---- targets, report -----------------------------------------------------------------

def ratios_and_targets(r):
    """Every ratio is named A_over_B (A's figure divided by B's, same unit)."""
    ns = r["single_op"]["ns_per_op"]
    counter = r["two_process_counter"]["ops_per_s"]
    pp = r["pingpong"]["us_per_round_trip"]
    ho = r["handoff"]["us_per_round_trip"]
    lk = r["lock_uncontended"]["ns_per_op"]
    ratios = {}
    for fast in ("method", "atomics_fn"):
        for peer in ("bare_cffi", "default_cffi", "mp_value_lock", "atomics_pkg", "ctypes_libatomic",
                     "ctypes_libc_abs", "node_atomics_add"):
            ratios[f"{peer}_over_{fast}"] = ns[peer] / ns[fast]
    # The most a zero-cost wrapper around one cffi call could reach against the peers.
    ratios["mp_value_lock_over_bare_cffi"] = ns["mp_value_lock"] / ns["bare_cffi"]
    ratios["atomics_pkg_over_bare_cffi"] = ns["atomics_pkg"] / ns["bare_cffi"]
    ratios["method_over_bare_cffi"] = ns["method"] / ns["bare_cffi"]
    ratios["counter_pyclusterc_over_mp_value_lock"] = counter["pyclusterc"] / counter["mp_value_lock"]
    for peer in PINGPONGS:
        if peer != "pyclusterc":
            ratios[f"pingpong_pyclusterc_over_{peer}"] = pp["pyclusterc"] / pp[peer]
    for peer in ("threading_lock", "mp_lock"):
        ratios[f"mutex_uncontended_pyclusterc_over_{peer}"] = lk["pyclusterc_mutex"] / lk[peer]
    for ours in ("pyclusterc_mutex", "pyclusterc_semaphore"):
        ratios[f"handoff_{ours}_over_mp_semaphore"] = ho[ours] / ho["mp_semaphore"]
    exact = all(r["two_process_counter"]["exact"].values())
    targets = {
        "method form within 1.5x of a bare cffi call":
            (ratios["method_over_bare_cffi"], "<= 1.5", True),
        "method form >= 4x faster than multiprocessing.Value + lock":
            (ratios["mp_value_lock_over_method"], ">= 4", True),
        "method form >= 20x faster than the atomics package":
            (ratios["atomics_pkg_over_method"], ">= 20", True),
        "two-process counter >= 8x the ops/s of multiprocessing.Value + lock, both exact":
            (ratios["counter_pyclusterc_over_mp_value_lock"], ">= 8", exact),
        "ping-pong within 1.2x of the raw ctypes futex loop":
            (ratios["pingpong_pyclusterc_over_ctypes_raw_futex"], "<= 1.2", True),
        "ping-pong faster than Node 20 (worker threads)":
            (ratios["pingpong_pyclusterc_over_node_worker_threads"], "< 1", True),
        "Mutex hand-off round trip <= 3 us": (ho["pyclusterc_mutex"], "<= 3", True),
        "Semaphore hand-off round trip <= 3 us": (ho["pyclusterc_semaphore"], "<= 3", True),
    }
    checks = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__}
    out = {}
    for name, (value, rule, also) in targets.items():
        op, bound = rule.split()
        out[name] = {"value": value, "target": rule,
                     "met": bool(checks[op](float(value), float(bound)) and also)}
    return ratios, out


def _pause_ns():
    """What one spin-loop PAUSE costs here: spin counts are PAUSEs, not time."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        lib.pc_pause(100_000)
        best = min(best, (time.perf_counter_ns() - t0) / 100_000)
    return best


def cpu_jiffies():
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def cpu_share(before, after):
    """How the machine's CPU time went during the run: busy (anyone) and stolen by the host."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return {"busy_fraction": (total - idle - delta[7]) / total, "steal_fraction": delta[7] / total}


def _version_or_none(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_facts(started):
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        node = None
    from importlib.metadata import version
    return {
        "date": started.isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "pyclusterc": getattr(pyclusterc, "__version__", version("pyclusterc")),
        "atomics_pkg": _version_or_none("atomics"),
        "load_average_at_start": os.getloadavg(),
        "spin": {"atomics.WAIT_SPIN": pc_atomics.WAIT_SPIN, "sync.SPIN": pc_sync.SPIN,
                 "bench CTYPES_SPIN (Python polls)": CTYPES_SPIN, "pause_ns": _pause_ns()},
    }


def fmt(x, digits=3):
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown(r):
    ns = r["single_op"]["ns_per_op"]
    counter = r["two_process_counter"]
    pp = r["pingpong"]["us_per_round_trip"]
    calls = r["wait_notify_calls"]["ns_per_op"]
    lk = r["lock_uncontended"]["ns_per_op"]
    ho = r["handoff"]["us_per_round_trip"]
    m = r["machine"]
    load = lambda key: ", ".join(f"{x:.2f}" for x in m[key])  # noqa: E731
    lines = [
        "## Atomics and shared memory",
        "",
        f"`python bench/bench_atomics.py`, {m['date']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"Linux {m['kernel']}, Python {m['python']}, Node {m['node']}, `atomics` {m['atomics_pkg']}; "
        f"load average {load('load_average_at_start')} at start, {load('load_average_at_end')} at end; "
        f"CPUs busy {m['cpu_during_run']['busy_fraction']:.0%} of the run (this bench included), "
        f"{m['cpu_during_run']['steal_fraction']:.0%} stolen by the host. "
        f"A spin-loop PAUSE costs {m['spin']['pause_ns']:.0f} ns here, so `Atomics.wait` spins up to "
        f"{m['spin']['atomics.WAIT_SPIN'] * m['spin']['pause_ns'] / 1000:.0f} µs and `Mutex`/`Semaphore` "
        f"up to {m['spin']['sync.SPIN'] * m['spin']['pause_ns'] / 1000:.0f} µs before sleeping. "
        f"Each figure is the median of {r['repetitions']} repetitions; in each repetition the "
        "candidates of a table run in a new shuffled order. Raw samples: `bench/results/atomics.json`. "
        "**In every ratio column, above 1 means pyclusterc is faster.**",
        "",
        "### One atomic add from Python on an Int32Array",
        "",
        f"ns per op, `timeit` loop included (an empty loop costs {fmt(ns['empty_loop'])} ns).",
        "",
        "| operation | ns/op | this ÷ `ta.add` | this ÷ `Atomics.add` |",
        "|---|---:|---:|---:|",
    ]
    single_rows = [
        ("pyclusterc `ta.add(0, 1)` (method form)", "method"),
        ("pyclusterc `Atomics.add(ta, 0, 1)`", "atomics_fn"),
        ("bare cffi API-mode call of the same op, `lib.pc_add_i32(p, 0, 1)` (GIL kept)", "bare_cffi"),
        ("cffi API-mode call with cffi's default wrapper (GIL released), `lib.pc_sem_value(p)`", "default_cffi"),
        ("`multiprocessing.Value`: `with v.get_lock(): v.value += 1`", "mp_value_lock"),
        ("`atomics` package: `atomicview(buffer=…, atype=atomics.INT)` `.fetch_add(1)`", "atomics_pkg"),
        ("ctypes: libatomic `__atomic_fetch_add_4(addr, 1, SEQ_CST)` (an atomic add)", "ctypes_libatomic"),
        ("ctypes: libc `abs(1)` (the bare cost of a ctypes call)", "ctypes_libc_abs"),
        ("Node 20 `Atomics.add` (JIT-compiled, for scale)", "node_atomics_add"),
    ]
    for label, key in single_rows:
        lines.append(f"| {label} | {fmt(ns[key])} | {ns[key] / ns['method']:.2f} | "
                     f"{ns[key] / ns['atomics_fn']:.2f} |")
    c = counter["ops_per_s"]
    lines += [
        "",
        "### Two processes incrementing one counter (fork)",
        "",
        f"{counter['increments_per_process']:,} increments per process; total ops/s from the first "
        "start to the last finish. Parallelism: CPU time of both processes ÷ wall time. pyclusterc's "
        "processes never sleep, so theirs says how much of the run both had a CPU at once (2.0 = all "
        "of it, 1.0 = they took turns, e.g. while other jobs held a CPU); multiprocessing's also "
        "drops while its lock puts a process to sleep.",
        "",
        "| counter | total ops/s | final count exact | pyclusterc ÷ this | parallelism |",
        "|---|---:|---|---:|---:|",
        f"| pyclusterc `ta.add(0, 1)` | {c['pyclusterc']:,.0f} | {counter['exact']['pyclusterc']} | 1.00 | "
        f"{counter['parallelism']['pyclusterc']:.2f} |",
        f"| `multiprocessing.Value` + lock | {c['mp_value_lock']:,.0f} | "
        f"{counter['exact']['mp_value_lock']} | {c['pyclusterc'] / c['mp_value_lock']:.2f} | "
        f"{counter['parallelism']['mp_value_lock']:.2f} |",
        "",
        f"### Cross-process ping-pong, {r['pingpong']['round_trips']:,} round trips",
        "",
        "The parent sets a shared cell to 1 and wakes the child; the child sets it to 0 and wakes "
        "the parent. Kernel sleeps: voluntary context switches of both sides per round trip "
        "(0 = every wait was caught by spinning; about 2 = every wait slept in the kernel).",
        "",
        "| mechanism | µs per round trip | this ÷ pyclusterc | kernel sleeps per round trip | best repetition, µs |",
        "|---|---:|---:|---:|---:|",
    ]
    pp_rows = [
        ("pyclusterc `Atomics.wait` / `Atomics.notify`, two processes", "pyclusterc"),
        ("raw `FUTEX_WAIT` / `FUTEX_WAKE` via ctypes `syscall` on an mmap'd shared page", "ctypes_raw_futex"),
        (f"ctypes: spin ({CTYPES_SPIN} Python polls), then futex; wake only a sleeper", "ctypes_spin_futex"),
        ("`multiprocessing.Pipe`, 1-byte messages", "mp_pipe"),
        ("Node 20 `Atomics.wait` / `Atomics.notify`, two worker threads", "node_worker_threads"),
    ]
    for label, key in pp_rows:
        lines.append(f"| {label} | {fmt(pp[key])} | {pp[key] / pp['pyclusterc']:.2f} | "
                     f"{r['pingpong']['sleeps_per_round_trip'][key]:.2f} | "
                     f"{fmt(r['pingpong']['best_us_per_round_trip'][key])} |")
    lines += [
        "",
        "What pyclusterc's side of a round trip costs in calls that never sleep (one process, ns): "
        + ", ".join(f"`{r['wait_notify_calls']['statements'][k]}` {fmt(calls[k])}" for k in calls) + ".",
        "",
        "### Mutex and Semaphore",
        "",
        "| uncontended acquire + release | ns | this ÷ pyclusterc `Mutex` |",
        "|---|---:|---:|",
    ]
    for label, key in [("pyclusterc `Mutex`: `m.acquire(); m.release()`", "pyclusterc_mutex"),
                       ("pyclusterc `Mutex`: `with m: pass`", "pyclusterc_mutex_with"),
                       ("`threading.Lock` (one process only)", "threading_lock"),
                       ("`multiprocessing.Lock`", "mp_lock")]:
        lines.append(f"| {label} | {fmt(lk[key])} | {lk[key] / lk['pyclusterc_mutex']:.2f} |")
    lines += [
        "",
        f"Hand-off between two processes, {r['handoff']['round_trips']:,} round trips: two gates "
        "start closed; the parent opens `ping` and takes `pong`, the child takes `ping` and opens `pong`.",
        "",
        "| hand-off | µs per round trip | `multiprocessing.Semaphore` pair ÷ this | kernel sleeps per round trip | best repetition, µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in [("pyclusterc `Mutex` pair", "pyclusterc_mutex"),
                       ("pyclusterc `Semaphore` pair", "pyclusterc_semaphore"),
                       ("`multiprocessing.Semaphore` pair", "mp_semaphore")]:
        lines.append(f"| {label} | {fmt(ho[key])} | {ho['mp_semaphore'] / ho[key]:.2f} | "
                     f"{r['handoff']['sleeps_per_round_trip'][key]:.2f} | "
                     f"{fmt(r['handoff']['best_us_per_round_trip'][key])} |")
    lines += ["", "### Targets (issue 2)", "", "| target | measured | rule | met |", "|---|---:|---|---|"]
    for name, t in r["targets"].items():
        lines.append(f"| {name} | {fmt(t['value'])} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions; print, write nothing")
    parser.add_argument("--reps", type=int, help="repetitions (default 9, quick 3)")
    parser.add_argument("--only", help="comma-separated steps to run (e.g. adaptive); prints, writes nothing")
    parser.add_argument("--before-python", help="interpreter of another pyclusterc build, measured "
                        "beside this one in the adaptive step")
    parser.add_argument("--one", choices=sorted(ADAPTIVE), help=argparse.SUPPRESS)
    parser.add_argument("--round-trips", type=int, help="round trips per cross-process measurement")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 9)
    batch = 0.02 if args.quick else 0.05
    round_trips = args.round_trips or (2000 if args.quick else 20000)
    if args.one:
        run_one(args.one, round_trips)
        return
    counter_n = 20000 if args.quick else 200000
    started = datetime.datetime.now(datetime.timezone.utc)
    jiffies = cpu_jiffies()
    results = {"machine": machine_facts(started), "quick": args.quick, "repetitions": reps}
    steps = [
        ("single_op", lambda: single_op(reps, batch)),
        ("two_process_counter", lambda: two_process_counter(reps, counter_n)),
        ("pingpong", lambda: pingpong(reps, round_trips)),
        ("wait_notify_calls", lambda: wait_notify_calls(reps, batch)),
        ("lock_uncontended", lambda: lock_uncontended(reps, batch)),
        ("handoff", lambda: handoff(reps, round_trips)),
        ("adaptive", lambda: adaptive(reps, round_trips, args.before_python)),
    ]
    only = set(args.only.split(",")) if args.only else None
    for name, step in steps:
        if only and name not in only:
            continue
        t0 = time.monotonic()
        with watchdog(1800):
            results[name] = step()
        print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["machine"]["cpu_during_run"] = cpu_share(jiffies, cpu_jiffies())
    results["seconds"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    tables = []
    if "adaptive" in results:
        results["adaptive_ratios"] = adaptive_ratios(results["adaptive"])
        tables.append(adaptive_markdown(results["adaptive"], results["adaptive_ratios"], reps))
    if not only:
        results["ratios"], results["targets"] = ratios_and_targets(results)
        tables.insert(0, markdown(results))
    text = "\n".join(tables)
    print(text)
    print(json.dumps({k: results[k] for k in ("adaptive_ratios",) if k in results}, indent=1), file=sys.stderr)
    if not args.quick and not only:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        with open(TABLES, "w") as f:
            f.write(text)
        print(f"wrote {RESULTS} and {TABLES}", file=sys.stderr)


if __name__ == "__main__":
    main()
