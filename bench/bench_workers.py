"""pyclusterc.workers beside multiprocessing, concurrent.futures and Node's worker_threads.

Usage: python bench/bench_workers.py [--quick] [--json bench/results/workers.json]
Every peer runs in the same invocation, so the ratios compare like with like.
"""
import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time

from pyclusterc import SharedBuffer
from pyclusterc.workers import WorkerPool
from pyclusterc.workers import Worker

HERE = os.path.dirname(os.path.abspath(__file__))
TUPLE, KIB = (1, 2, 3), b"x" * 1024
ARRAY_BYTES = 256 << 20
FORK = mp.get_context("fork")
# numpy is imported where it is used: spawn/forkserver children import this module (as
# __mp_main__, for both libraries), and the start figures should not include numpy.


# ---- worker bodies ------------------------------------------------------------------------
def pc_sender(n, msg):
    from pyclusterc.workers import parent_port
    for _ in range(n):
        parent_port.post_message(msg)


def mp_sender(q, n, msg):
    for _ in range(n):
        q.put(msg)


def pc_echo():
    from pyclusterc.workers import parent_port
    for m in parent_port:
        if m is None:
            return
        parent_port.post_message(m)


def mp_echo(conn):
    while (m := conn.recv()) is not None:
        conn.send(m)


def pc_summer():
    import numpy as np
    from pyclusterc.workers import parent_port, worker_data
    for m in parent_port:
        if m is None:
            return
        arr = np.frombuffer(worker_data, dtype=np.float64) if isinstance(m, str) else m
        parent_port.post_message(float(arr.sum()))


def mp_summer(conn):
    while (m := conn.recv()) is not None:
        conn.send(float(m.sum()))


def pc_hello():
    from pyclusterc.workers import parent_port
    parent_port.post_message("hi")


def mp_hello(conn):
    conn.send("hi")


def cpu_task(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


# ---- measurements ----------------------------------------------------------------------------
def best(fn, repeat):
    return min(fn() for _ in range(repeat))


def one_way(n, msg, repeat):
    def pc():
        w = Worker(pc_sender, args=(n, msg))
        w.receive()                       # first message: the worker is running
        t = time.perf_counter()
        for _ in range(n - 1):
            w.receive()
        dt = time.perf_counter() - t
        w.join()
        return dt / (n - 1)

    def mpq():
        q = FORK.Queue()
        p = FORK.Process(target=mp_sender, args=(q, n, msg))
        p.start()
        q.get()
        t = time.perf_counter()
        for _ in range(n - 1):
            q.get()
        dt = time.perf_counter() - t
        p.join()
        return dt / (n - 1)
    return 1 / best(pc, repeat), 1 / best(mpq, repeat)


def _echo_trips(send, recv, n):
    """Seconds per round trip over n, after one to warm up."""
    send(0)
    recv()
    t = time.perf_counter()
    for i in range(n):
        send(i)
        recv()
    return (time.perf_counter() - t) / n


def round_trip(n, repeat):
    def pc():
        w = Worker(pc_echo)
        dt = _echo_trips(w.post_message, w.receive, n)
        w.post_message(None)
        w.join()
        return dt

    def pipe():
        a, b = FORK.Pipe()
        p = FORK.Process(target=mp_echo, args=(b,))
        p.start()
        dt = _echo_trips(a.send, a.recv, n)
        a.send(None)
        p.join()
        return dt
    return best(pc, repeat) * 1e6, best(pipe, repeat) * 1e6


def big_array(repeat):
    import numpy as np
    buf = SharedBuffer(ARRAY_BYTES)
    shared = np.frombuffer(buf, dtype=np.float64)
    shared[:] = 1.0
    private = np.ones(ARRAY_BYTES // 8)
    w = Worker(pc_summer, worker_data=buf)
    a, b = FORK.Pipe()
    p = FORK.Process(target=mp_summer, args=(b,))
    p.start()

    def timed(send, recv):
        def run():
            t = time.perf_counter()
            send()
            assert recv() == ARRAY_BYTES / 8
            return time.perf_counter() - t
        return best(run, repeat) * 1e3

    out = {
        "shared_ms": timed(lambda: w.post_message("shared"), w.receive),
        "transfer_ms": timed(lambda: _transfer(w, private), w.receive),
        "pipe_ms": timed(lambda: a.send(private), a.recv),
    }
    w.post_message(None)
    w.join()
    a.send(None)
    p.join()
    del shared
    return out


def _transfer(w, arr):
    # A transfer moves the array; the benchmark reuses one, which is fine because the
    # worker only reads its copy.
    w.post_message(arr, transfer=[arr])


def start_to_first(repeat, method="fork"):
    """Best of repeat, ms, the two measured in turn (a busy machine slows both alike);
    a forkserver is already running after the first try (both)."""
    ctx = mp.get_context(method)

    def pc():
        t = time.perf_counter()
        w = Worker(pc_hello, start_method=method)
        w.receive()
        dt = time.perf_counter() - t
        w.join()
        return dt

    def mpf():
        t = time.perf_counter()
        a, b = ctx.Pipe()
        p = ctx.Process(target=mp_hello, args=(b,))
        p.start()
        a.recv()
        dt = time.perf_counter() - t
        p.join()
        return dt
    ours, peer = [], []
    for _ in range(repeat):
        ours.append(pc())
        peer.append(mpf())
    return min(ours) * 1e3, min(peer) * 1e3


def tiny_tasks(n, repeat):
    """Tasks per second of map() over n trivial tasks of a function defined in __main__
    (by value for WorkerPool, by reference after the fork for ProcessPoolExecutor)."""
    def rate(make):
        def one():
            with make() as p:
                list(p.map(tiny_task, range(100)))      # workers up
                t = time.perf_counter()
                list(p.map(tiny_task, range(n)))
                return n / (time.perf_counter() - t)
        return one
    ours, peer = [], []
    for _ in range(repeat):
        ours.append(rate(lambda: WorkerPool(2))())
        peer.append(rate(lambda: cf.ProcessPoolExecutor(2, mp_context=FORK))())
    return max(ours), max(peer)


def tiny_task(x):
    return x + 1


def pool_map(tasks, size, repeat):
    """Wall time (best of repeat), and the CPUs actually used: CPU seconds of this process
    and its reaped children over wall seconds. Serial gets 1.0 on an idle machine and a
    2-worker pool 2.0; less means other processes took the CPU."""
    items = [size] * tasks

    def timed(run):
        c0, t = os.times(), time.perf_counter()
        run()
        wall, c1 = time.perf_counter() - t, os.times()
        cpu = sum(c1[:4]) - sum(c0[:4])
        return wall, cpu / wall

    def serial():
        list(map(cpu_task, items))

    def ours():
        with WorkerPool(2) as p:
            list(p.map(cpu_task, items))

    def ppe():
        with cf.ProcessPoolExecutor(2, mp_context=FORK) as p:
            list(p.map(cpu_task, items))
    runs = {"serial": [], "ours": [], "ppe": []}
    for _ in range(repeat):                # in turn, so load from elsewhere hits all three
        for name, run in (("serial", serial), ("ours", ours), ("ppe", ppe)):
            runs[name].append(timed(run))
    (s, s_cpus), (o, o_cpus), (e, e_cpus) = (min(runs[k]) for k in ("serial", "ours", "ppe"))
    return {"serial_s": s, "workerpool_s": o, "processpool_s": e,
            "workerpool_speedup": s / o, "processpool_speedup": s / e,
            "cpus_used": {"serial": s_cpus, "workerpool": o_cpus, "processpool": e_cpus}}


def node(n, trips):
    try:
        out = subprocess.run(["node", os.path.join(HERE, "node", "workers_messages.js"), str(n), str(trips)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    q = args.quick
    n, trips, repeat = (30000, 3000, 1) if q else (200000, 20000, 3)
    r = {"quick": q, "python": platform.python_version(), "cpus": os.cpu_count()}
    r["tuple_per_s"], r["mpqueue_tuple_per_s"] = one_way(n, TUPLE, repeat)
    r["kib_per_s"], r["mpqueue_kib_per_s"] = one_way(n, KIB, repeat)
    r["round_trip_us"], r["pipe_round_trip_us"] = round_trip(trips, repeat)
    r["array"] = big_array(2 if q else 3)
    r["start_ms"], r["mp_fork_start_ms"] = start_to_first(3 if q else 10)
    r["forkserver_start_ms"], r["mp_forkserver_start_ms"] = start_to_first(3 if q else 5, "forkserver")
    r["spawn_start_ms"], r["mp_spawn_start_ms"] = start_to_first(3 if q else 5, "spawn")
    r["pool"] = pool_map(16, 150_000 if q else 400_000, 1 if q else 3)
    r["tiny_tasks_per_s"], r["ppe_tiny_tasks_per_s"] = tiny_tasks(5000 if q else 20000, 1 if q else 3)
    r["node"] = node(n, trips)
    nd = r["node"]
    targets = {
        "one-way tuple >= 3x mp.Queue": r["tuple_per_s"] / r["mpqueue_tuple_per_s"] >= 3,
        "one-way 1 KiB >= 3x mp.Queue": r["kib_per_s"] / r["mpqueue_kib_per_s"] >= 3,
        "round trip < mp.Pipe": r["round_trip_us"] < r["pipe_round_trip_us"],
        "round trip < Node": r["round_trip_us"] < nd.get("round_trip_us", 0),
        "256 MiB shared >= 20x Pipe": r["array"]["pipe_ms"] / r["array"]["shared_ms"] >= 20,
        "256 MiB transfer >= 4x Pipe": r["array"]["pipe_ms"] / r["array"]["transfer_ms"] >= 4,
        "start <= 1.2x mp fork and <= 5 ms": r["start_ms"] <= 1.2 * r["mp_fork_start_ms"] and r["start_ms"] <= 5,
        "WorkerPool.map >= 1.85x serial": r["pool"]["workerpool_speedup"] >= 1.85,
        "WorkerPool.map >= ProcessPoolExecutor": r["pool"]["workerpool_s"] <= r["pool"]["processpool_s"],
        "tiny tasks >= ProcessPoolExecutor": r["tiny_tasks_per_s"] >= r["ppe_tiny_tasks_per_s"],
    }
    r["targets_met"] = targets
    rows = [
        ("one-way tuple(3 ints) msg/s", r["tuple_per_s"], r["mpqueue_tuple_per_s"], nd.get("one_way_tuple_per_s")),
        ("one-way 1 KiB bytes msg/s", r["kib_per_s"], r["mpqueue_kib_per_s"], nd.get("one_way_1k_per_s")),
        ("round trip us (peer: mp.Pipe)", r["round_trip_us"], r["pipe_round_trip_us"], nd.get("round_trip_us")),
        ("256 MiB SharedBuffer sum ms (peer: Pipe)", r["array"]["shared_ms"], r["array"]["pipe_ms"], None),
        ("256 MiB transfer sum ms (peer: Pipe)", r["array"]["transfer_ms"], r["array"]["pipe_ms"], None),
        ("start to first msg ms (peer: mp fork)", r["start_ms"], r["mp_fork_start_ms"], nd.get("start_ms")),
        ("  forkserver (peer: mp forkserver)", r["forkserver_start_ms"], r["mp_forkserver_start_ms"], None),
        ("  spawn (peer: mp spawn)", r["spawn_start_ms"], r["mp_spawn_start_ms"], None),
        ("pool.map 2 workers s (peer: PPE)", r["pool"]["workerpool_s"], r["pool"]["processpool_s"], None),
        ("pool.map tiny tasks/s (peer: PPE)", r["tiny_tasks_per_s"], r["ppe_tiny_tasks_per_s"], None),
    ]
    print(f"{'benchmark':44} {'pyclusterc':>12} {'python peer':>12} {'ratio':>7} {'node':>12}")
    for name, ours, peer, nv in rows:
        ratio = ours / peer if "/s" in name else peer / ours
        print(f"{name:44} {ours:12.1f} {peer:12.1f} {ratio:6.2f}x {nv if nv is None else round(nv, 1)!s:>12}")
    used = r["pool"]["cpus_used"]
    print(f"serial {r['pool']['serial_s']:.2f} s: WorkerPool {r['pool']['workerpool_speedup']:.2f}x, "
          f"ProcessPoolExecutor {r['pool']['processpool_speedup']:.2f}x; CPUs used: serial "
          f"{used['serial']:.2f}, WorkerPool {used['workerpool']:.2f}, PPE {used['processpool']:.2f}")
    for k, v in targets.items():
        print(f"  [{'met' if v else 'NOT met'}] {k}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
