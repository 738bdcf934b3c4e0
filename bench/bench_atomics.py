#!/usr/bin/env python3
"""Atomics and shared memory: pyclusterc beside its peers, measured in one run.

    python bench/bench_atomics.py            # full run: writes bench/results/atomics.json
                                             # and the table in docs/benchmarks.md
    python bench/bench_atomics.py --quick    # smoke run: prints, writes nothing

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
from pyclusterc import atomics as pc_atomics
from pyclusterc import sync as pc_sync
from pyclusterc._native import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "atomics.json")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
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
    ta = Int32Array(4)
    ptr = ta._ptr
    mp_value = multiprocessing.Value("i", 0)
    page = mmap.mmap(-1, mmap.PAGESIZE)
    stack = contextlib.ExitStack()
    import atomics
    view = stack.enter_context(atomics.atomicview(buffer=memoryview(page)[:4], atype=atomics.INT))
    ctypes_cell = ctypes.c_int32.from_buffer(page, 8)
    ctypes_address = ctypes.addressof(ctypes_cell)
    namespace = {
        "ta": ta, "Atomics": Atomics, "lib": lib, "p": ptr, "v": mp_value, "view": view,
        "fetch_add": _fetch_add_4, "addr": ctypes_address, "SEQ_CST": _SEQ_CST,
        "abs": _libc.abs, "cell": ctypes_cell,
    }
    statements = {
        "method": "ta.add(0, 1)",
        "atomics_fn": "Atomics.add(ta, 0, 1)",
        "bare_cffi": "lib.pc_add_i32(p, 0, 1)",
        "mp_value_lock": "with v.get_lock(): v.value += 1",
        "atomics_pkg": "view.fetch_add(1)",
        "ctypes_libatomic": "fetch_add(addr, 1, SEQ_CST)",
        "ctypes_libc_abs": "abs(1)",
        "empty_loop": "pass",
    }
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in statements.items()}
    # Size each batch to about batch_seconds so slow and fast candidates get equal time.
    numbers = {}
    for name, timer in timers.items():
        n, took = timer.autorange()
        numbers[name] = max(1000, int(n * batch_seconds / took))

    def measure(name):
        return timers[name].timeit(numbers[name]) / numbers[name] * 1e9

    try:
        samples = interleaved(statements, reps, measure)
    finally:
        del view
        stack.close()
    ns = {name: median(values) for name, values in samples.items()}
    return {
        "statements": statements,
        "ns_per_op": ns,
        "ops_per_batch": numbers,
        "samples_ns": samples,
    }


# ---- 2. two processes incrementing one counter --------------------------------------

def _counter_run(kind, n):
    """Two forked processes each add 1 n times to one counter; returns (ops/s, exact)."""
    # control: [0] ready count, [1] go; times: per child start/end (CLOCK_MONOTONIC ns).
    control = Int32Array(2)
    times = BigInt64Array(4)
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
            times.store(2 * k, time.monotonic_ns())
            work()
            times.store(2 * k + 1, time.monotonic_ns())
        return run

    with children(child(0), child(1)):
        while control.load(0) < 2:
            time.sleep(0.001)
        control.store(1, 1)
    elapsed = max(times[1], times[3]) - min(times[0], times[2])
    return 2 * n / (elapsed / 1e9), total() == 2 * n, total()


def two_process_counter(reps, n):
    exact = {"pyclusterc": True, "mp_value_lock": True}
    finals = {}

    def measure(kind):
        ops, ok, final = _counter_run(kind, n)
        exact[kind] &= ok
        finals[kind] = final
        return ops

    samples = interleaved(exact, reps, measure)
    return {
        "increments_per_process": n,
        "ops_per_s": {k: median(v) for k, v in samples.items()},
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


PINGPONGS = {
    "pyclusterc": pingpong_pyclusterc,
    "ctypes_raw_futex": pingpong_raw_futex,
    "ctypes_spin_futex": pingpong_spin_futex,
    "mp_pipe": pingpong_mp_pipe,
    "node_worker_threads": pingpong_node,
}


def pingpong(reps, n):
    samples = interleaved(PINGPONGS, reps, lambda name: PINGPONGS[name](n))
    return {
        "round_trips": n,
        "us_per_round_trip": {k: median(v) for k, v in samples.items()},
        "samples_us": samples,
    }


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
    samples = interleaved(HANDOFFS, reps, lambda name: _handoff(HANDOFFS[name], n))
    return {"round_trips": n, "us_per_round_trip": {k: median(v) for k, v in samples.items()},
            "samples_us": samples}


# ---- targets, report -----------------------------------------------------------------

def ratios_and_targets(r):
    ns = r["single_op"]["ns_per_op"]
    counter = r["two_process_counter"]["ops_per_s"]
    pp = r["pingpong"]["us_per_round_trip"]
    ho = r["handoff"]["us_per_round_trip"]
    ratios = {
        "method_vs_bare_cffi": ns["method"] / ns["bare_cffi"],
        "atomics_fn_vs_bare_cffi": ns["atomics_fn"] / ns["bare_cffi"],
        "mp_value_lock_vs_method": ns["mp_value_lock"] / ns["method"],
        "atomics_pkg_vs_method": ns["atomics_pkg"] / ns["method"],
        "ctypes_libatomic_vs_method": ns["ctypes_libatomic"] / ns["method"],
        "mp_value_lock_vs_atomics_fn": ns["mp_value_lock"] / ns["atomics_fn"],
        "atomics_pkg_vs_atomics_fn": ns["atomics_pkg"] / ns["atomics_fn"],
        "counter_pyclusterc_vs_mp_value_lock": counter["pyclusterc"] / counter["mp_value_lock"],
        "pingpong_pyclusterc_vs_raw_futex": pp["pyclusterc"] / pp["ctypes_raw_futex"],
        "pingpong_pyclusterc_vs_spin_futex": pp["pyclusterc"] / pp["ctypes_spin_futex"],
        "pingpong_pyclusterc_vs_mp_pipe": pp["pyclusterc"] / pp["mp_pipe"],
        "pingpong_pyclusterc_vs_node": pp["pyclusterc"] / pp["node_worker_threads"],
        "handoff_mutex_vs_mp_semaphore": ho["pyclusterc_mutex"] / ho["mp_semaphore"],
        "handoff_semaphore_vs_mp_semaphore": ho["pyclusterc_semaphore"] / ho["mp_semaphore"],
    }
    exact = r["two_process_counter"]["exact"]
    targets = {
        "method form within 1.5x of a bare cffi call": (ratios["method_vs_bare_cffi"], "<= 1.5"),
        "method form >= 4x faster than multiprocessing.Value + lock":
            (ratios["mp_value_lock_vs_method"], ">= 4"),
        "method form >= 20x faster than the atomics package": (ratios["atomics_pkg_vs_method"], ">= 20"),
        "two-process counter >= 8x multiprocessing.Value + lock, exact":
            (ratios["counter_pyclusterc_vs_mp_value_lock"], ">= 8"),
        "ping-pong within 1.2x of the raw ctypes futex loop":
            (ratios["pingpong_pyclusterc_vs_raw_futex"], "<= 1.2"),
        "ping-pong faster than Node 20": (ratios["pingpong_pyclusterc_vs_node"], "< 1"),
        "Mutex hand-off round trip <= 3 us": (ho["pyclusterc_mutex"], "<= 3"),
        "Semaphore hand-off round trip <= 3 us": (ho["pyclusterc_semaphore"], "<= 3"),
    }
    checks = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__}
    out = {}
    for name, (value, rule) in targets.items():
        op, bound = rule.split()
        met = checks[op](float(value), float(bound))
        if name.startswith("two-process"):
            met = met and all(exact.values())
        out[name] = {"value": value, "target": rule, "met": met}
    return ratios, out


def machine_facts(started):
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        node = None
    import atomics
    from importlib.metadata import version
    return {
        "date": started.isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "pyclusterc": getattr(pyclusterc, "__version__", version("pyclusterc")),
        "atomics_pkg": version("atomics"),
        "load_average_at_start": os.getloadavg(),
        "spin": {"atomics.WAIT_SPIN": pc_atomics.WAIT_SPIN, "sync.SPIN": pc_sync.SPIN,
                 "bench CTYPES_SPIN (Python polls)": CTYPES_SPIN},
    }


def fmt(x, digits=3):
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown(r):
    ns = r["single_op"]["ns_per_op"]
    counter = r["two_process_counter"]
    pp = r["pingpong"]["us_per_round_trip"]
    lk = r["lock_uncontended"]["ns_per_op"]
    ho = r["handoff"]["us_per_round_trip"]
    ratios = r["ratios"]
    m = r["machine"]
    lines = [
        "## Atomics and shared memory",
        "",
        f"`python bench/bench_atomics.py` on {m['date']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"Linux {m['kernel']}, Python {m['python']}, Node {m['node']}, atomics {m['atomics_pkg']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. "
        f"Medians of {r['repetitions']} repetitions, peers interleaved in a shuffled order in each. "
        "Raw figures: `bench/results/atomics.json`. Ratios are pyclusterc ÷ peer "
        "(below 1 = pyclusterc faster) for times, and pyclusterc ÷ peer for throughput.",
        "",
        "### One atomic add from Python (Int32Array), ns per op",
        "",
        "Each figure includes the `timeit` loop (empty loop: "
        f"{fmt(ns['empty_loop'])} ns).",
        "",
        "| operation | ns/op | `ta.add` ÷ this | `Atomics.add` ÷ this |",
        "|---|---:|---:|---:|",
    ]
    single_rows = [
        ("`ta.add(0, 1)` (method form)", "method"),
        ("`Atomics.add(ta, 0, 1)`", "atomics_fn"),
        ("bare cffi API-mode call `lib.pc_add_i32(p, 0, 1)`", "bare_cffi"),
        ("`multiprocessing.Value`: `with v.get_lock(): v.value += 1`", "mp_value_lock"),
        ("`atomics` package: `atomicview(..., atype=INT).fetch_add(1)`", "atomics_pkg"),
        ("ctypes call of libatomic `__atomic_fetch_add_4(addr, 1, SEQ_CST)`", "ctypes_libatomic"),
        ("ctypes call of libc `abs(1)` (bare ctypes call cost)", "ctypes_libc_abs"),
    ]
    for label, key in single_rows:
        lines.append(f"| {label} | {fmt(ns[key])} | {ns['method'] / ns[key]:.2f} | "
                     f"{ns['atomics_fn'] / ns[key]:.2f} |")
    c = counter["ops_per_s"]
    lines += [
        "",
        "### Two processes incrementing one counter (fork)",
        "",
        f"{counter['increments_per_process']:,} increments per process; total ops/s from the first "
        "start to the last finish.",
        "",
        "| counter | total ops/s | final count exact | pyclusterc ÷ this |",
        "|---|---:|---|---:|",
        f"| pyclusterc `ta.add(0, 1)` | {c['pyclusterc']:,.0f} | {counter['exact']['pyclusterc']} | 1.00 |",
        f"| `multiprocessing.Value` + lock | {c['mp_value_lock']:,.0f} | "
        f"{counter['exact']['mp_value_lock']} | {ratios['counter_pyclusterc_vs_mp_value_lock']:.2f} |",
        "",
        f"### Cross-process ping-pong, {r['pingpong']['round_trips']:,} round trips, µs per round trip",
        "",
        "| mechanism | µs/round trip | pyclusterc ÷ this |",
        "|---|---:|---:|",
    ]
    pp_rows = [
        ("pyclusterc `Atomics.wait` / `Atomics.notify` (processes)", "pyclusterc"),
        ("raw `FUTEX_WAIT`/`FUTEX_WAKE` through ctypes on an mmap'd page", "ctypes_raw_futex"),
        (f"spin ({CTYPES_SPIN} Python polls) then futex, through ctypes", "ctypes_spin_futex"),
        ("`multiprocessing.Pipe` (1-byte messages)", "mp_pipe"),
        ("Node 20 `Atomics.wait`/`notify` between worker threads", "node_worker_threads"),
    ]
    for label, key in pp_rows:
        lines.append(f"| {label} | {fmt(pp[key])} | {pp['pyclusterc'] / pp[key]:.2f} |")
    lines += [
        "",
        "### Mutex and Semaphore",
        "",
        "| uncontended acquire + release | ns | pyclusterc `Mutex` ÷ this |",
        "|---|---:|---:|",
    ]
    for label, key in [("pyclusterc `Mutex`: `m.acquire(); m.release()`", "pyclusterc_mutex"),
                       ("pyclusterc `Mutex`: `with m: pass`", "pyclusterc_mutex_with"),
                       ("`threading.Lock`", "threading_lock"),
                       ("`multiprocessing.Lock`", "mp_lock")]:
        lines.append(f"| {label} | {fmt(lk[key])} | {lk['pyclusterc_mutex'] / lk[key]:.2f} |")
    lines += [
        "",
        f"Hand-off between two processes ({r['handoff']['round_trips']:,} round trips): two gates, "
        "the parent opens one and takes the other, the child the reverse.",
        "",
        "| hand-off | µs/round trip | ÷ `multiprocessing.Semaphore` pair |",
        "|---|---:|---:|",
    ]
    for label, key in [("pyclusterc `Mutex` pair", "pyclusterc_mutex"),
                       ("pyclusterc `Semaphore` pair", "pyclusterc_semaphore"),
                       ("`multiprocessing.Semaphore` pair", "mp_semaphore")]:
        lines.append(f"| {label} | {fmt(ho[key])} | {ho[key] / ho['mp_semaphore']:.2f} |")
    lines += ["", "### Targets (issue 2)", "", "| target | measured | rule | met |", "|---|---:|---|---|"]
    for name, t in r["targets"].items():
        lines.append(f"| {name} | {fmt(t['value'])} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def write_docs(section):
    """Replace (or add) the "Atomics and shared memory" section of docs/benchmarks.md."""
    head = "# Benchmarks\n\nEach section is written by the benchmark script it names.\n\n"
    text = head
    if os.path.exists(DOCS):
        with open(DOCS) as f:
            text = f.read()
    start = text.find("## Atomics and shared memory")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if end < 0 else text[end:])
    os.makedirs(os.path.dirname(DOCS), exist_ok=True)
    with open(DOCS, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions; print, write nothing")
    parser.add_argument("--reps", type=int, help="repetitions (default 9, quick 3)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 9)
    batch = 0.02 if args.quick else 0.05
    round_trips = 2000 if args.quick else 20000
    counter_n = 20000 if args.quick else 200000
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"machine": machine_facts(started), "quick": args.quick, "repetitions": reps}
    steps = [
        ("single_op", lambda: single_op(reps, batch)),
        ("two_process_counter", lambda: two_process_counter(reps, counter_n)),
        ("pingpong", lambda: pingpong(reps, round_trips)),
        ("lock_uncontended", lambda: lock_uncontended(reps, batch)),
        ("handoff", lambda: handoff(reps, round_trips)),
    ]
    for name, step in steps:
        t0 = time.monotonic()
        with watchdog(1800):
            results[name] = step()
        print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    results["ratios"], results["targets"] = ratios_and_targets(results)
    table = markdown(results)
    print(table)
    if not args.quick:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        write_docs(table)
        print(f"wrote {RESULTS} and {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main()
