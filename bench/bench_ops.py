#!/usr/bin/env python3
"""What logging and measuring every request cost: `pyclusterc run` plain (no access log,
no metrics) beside the access log, the metrics (--metrics-bind: the request-duration
histogram and status classes counted in the scoreboard) and both; keep-alive req/s with
wrk, side by side in one run.

    python bench/bench_ops.py            # writes bench/results/ops.json, prints a table
    python bench/bench_ops.py --quick    # 2 s runs, one round, prints only
    python bench/bench_ops.py --interleave 6 --seconds 2 --rounds 5
        # the modes up at once, 6 passes of 2 s over them per round (steadier;
        # writes bench/results/ops_interleaved.json)
    python bench/bench_ops.py --simultaneous 3 --seconds 2 --rounds 8
        # each mode at the same time as plain, both on one CPU: the host's changes of
        # speed hit both alike (writes bench/results/ops_simultaneous.json)

Same load for each: 2 workers, `wrk -t1 -c32` keep-alive, hello world (ASGI and WSGI);
with --pinned, 1 worker, the cluster on one CPU and wrk on the other.
The cluster's output goes to a file in both modes, as a background app's does. Runs in
rounds (default 3), each with the modes in a new shuffled order; the figure is the median
of the per-round on/off ratios (the machine is small and shared: ratios within a round
are steadier than absolute numbers). The issue's budget: the access log and the latency
histogram cost at most 5% of keep-alive req/s. A fifth mode, "plain, again", is a second
plain cluster: its ratio (an A/A test) shows how far the method is off for two identical
servers, so a cost within that spread is not resolved.
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import EXAMPLES, PY, free_port, stop_group, wait_ready  # noqa: E402 - the shared helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# "plain, again": a second plain cluster, measured as the others are. Its ratio to plain
# is what the method reads for two identical servers (an A/A test): how far a ratio
# of the other modes can be off for the machine's noise alone.
MODES = ("plain", "access log", "metrics", "access log + metrics", "plain, again")


# --pinned: the cluster (primary and its one worker) on CPU 1, wrk on CPU 0. Each gets a
# CPU of its own, so a cluster's req/s is its CPU cost per request, and no round gets the
# luck of where the scheduler put two workers (two identical 2-worker clusters differed
# by up to 20% over a round). Needs 2 CPUs.
CLUSTER_CPU, WRK_CPU = "1", "0"


def modes(port, pinned=False):
    base = {"asgi": ["hello_asgi:app"], "wsgi": ["hello_wsgi:app"]}
    out = {}
    for kind, target in base.items():
        # Its own name: --interleave keeps several clusters of one app up at once.
        argv = [PY, "-m", "pyclusterc", "run", *target, "-i", "1" if pinned else "2", "-b", f"127.0.0.1:{port}",
                "--name", f"bench-ops-{port}"]
        if pinned:
            argv = ["taskset", "-c", CLUSTER_CPU] + argv
        metrics = ["--metrics-bind", f"127.0.0.1:{free_port()}"]
        out[(kind, "plain")] = argv + ["--no-access-log"]
        out[(kind, "access log")] = argv  # on by default
        out[(kind, "metrics")] = argv + ["--no-access-log"] + metrics
        out[(kind, "access log + metrics")] = argv + metrics
        out[(kind, "plain, again")] = argv + ["--no-access-log"]
    return out


def wrk(port, seconds, pinned=False):
    return finish_wrk(start_wrk(port, seconds, pinned), seconds)


def start_wrk(port, seconds, pinned=False):
    argv = (["taskset", "-c", WRK_CPU] if pinned else []) + ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency",
                                                              f"http://127.0.0.1:{port}/"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish_wrk(proc, seconds):
    try:
        out = proc.communicate(timeout=seconds + 30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": requests, "socket_errors": errors.group(1).strip() if errors else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def private_runtime(log_dir, hash_seed=None):
    """The clusters' control sockets and state in the bench's own temp dir, not the user's;
    hash_seed: PYTHONHASHSEED, one for every cluster of a round (their dicts laid out
    alike: two identical clusters differ less), a new one each round."""
    env = {**os.environ, "XDG_RUNTIME_DIR": log_dir}
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = str(hash_seed)
    return env


def measure(argv, port, seconds, log_dir, pinned=False):
    cluster = Cluster(argv, port, log_dir, pinned)
    try:
        before = cluster_cpu_seconds(cluster.proc.pid)
        result = wrk(port, seconds, pinned)
        used = cluster_cpu_seconds(cluster.proc.pid) - before
        # CPU of the primary and its workers per request: steadier than req/s on a
        # shared machine (time the host runs someone else is not counted).
        result["cpu_us_per_request"] = round(used / max(1, result["requests"]) * 1e6, 2)
    finally:
        lines = cluster.stop()
    result["log_lines"] = lines
    return result


class Cluster:
    """One `pyclusterc run` in a session of its own, its output to a file."""

    def __init__(self, argv, port, log_dir, pinned=False, hash_seed=None):
        self.port = port
        self.log_path = os.path.join(log_dir, f"out-{port}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=EXAMPLES, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=private_runtime(log_dir, hash_seed))
        try:
            wait_ready(port, self.proc)
            wrk(port, 1, pinned)  # warm up
        except BaseException:
            self.stop()
            raise

    def stop(self):
        """Stop the cluster; the lines its output file got (then removed)."""
        stop_group(self.proc, 10)
        with open(self.log_path, "rb") as f:
            lines = sum(1 for _ in f)
        os.unlink(self.log_path)
        return lines


def start_clusters(clusters, names, log_dir, pinned):
    """One cluster per name into `clusters` (the caller stops them, started or not all),
    with one PYTHONHASHSEED for the round. Started in a new order each round: a cluster
    started first came out faster (or slower) than its twins over a whole round, in A/A
    runs."""
    hash_seed = random.randrange(1 << 32)
    for name in random.sample(names, len(names)):
        port = free_port()
        clusters[name] = Cluster(modes(port, pinned)[name], port, log_dir, pinned, hash_seed)


def new_totals():
    return {"requests": 0, "seconds": 0.0, "cpu_seconds": 0.0, "errors": []}


def add_slice(total, cpu_seconds, result, seconds):
    """One wrk slice of one cluster into its totals."""
    total["cpu_seconds"] += cpu_seconds
    total["requests"] += result["requests"]
    total["seconds"] += seconds
    if result["socket_errors"] or result["non_2xx"]:
        total["errors"].append([result["socket_errors"], result["non_2xx"]])


def interleaved_round(names, slices, seconds, log_dir, pinned=False):
    """The modes of one interface up at once; `slices` passes, each running wrk
    for `seconds` on every mode in a new shuffled order. Adjacent slices share the
    host's state of the moment (another tenant's load comes and goes over seconds), so
    the round's ratio is steadier than that of runs a minute apart. Returns
    {name: {"requests", "seconds", "cpu_seconds"}}."""
    clusters = {}
    try:
        start_clusters(clusters, names, log_dir, pinned)
        totals = {name: new_totals() for name in names}
        for _ in range(slices):
            order = names[:]
            random.shuffle(order)
            for name in order:
                cluster = clusters[name]
                before = cluster_cpu_seconds(cluster.proc.pid)
                result = wrk(cluster.port, seconds, pinned)
                add_slice(totals[name], cluster_cpu_seconds(cluster.proc.pid) - before, result, seconds)
        return totals
    finally:
        for cluster in clusters.values():
            cluster.stop()


def cluster_cpu_seconds(pid):
    """user + system CPU of a process and its children (the primary and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid] + [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, one round, no file written")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", default="asgi,wsgi", help="asgi, wsgi or both (comma-separated)")
    parser.add_argument("--interleave", type=int, metavar="SLICES", default=0,
                        help="per round, keep the modes up at once and run SLICES passes of "
                             "--seconds each over them (writes bench/results/ops_interleaved.json)")
    parser.add_argument("--simultaneous", type=int, metavar="WINDOWS", default=0,
                        help="per round, run each mode at the same time as plain, both on CPU 1 (1 worker "
                             "each), WINDOWS windows of --seconds (writes bench/results/ops_simultaneous.json)")
    parser.add_argument("--pinned", action="store_true",
                        help="one worker; the cluster on CPU 1, wrk on CPU 0 (results: ops_pinned*.json)")
    args = parser.parse_args()
    if (args.pinned or args.simultaneous) and (shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2):
        sys.exit("bench_ops: --pinned and --simultaneous need taskset and 2 usable CPUs")
    kinds = [kind for kind in ("asgi", "wsgi") if kind in args.only.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("bench_ops: wrk is not installed (apt-get install wrk)")
    if args.interleave or args.simultaneous:
        return main_interleaved(args, kinds)
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    names = [name for name in modes(0) if name[0] in kinds]
    per_round = []
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as log_dir:
        for index in range(rounds):
            order = names[:]
            random.shuffle(order)
            results = {}
            for name in order:
                port = free_port()
                results[name] = measure(modes(port, args.pinned)[name], port, seconds, log_dir, args.pinned)
                print(f"round {index + 1} {name[0]} {name[1]}: {results[name]['rps']:.0f} req/s "
                      f"({results[name]['log_lines']} log lines, errors {results[name]['socket_errors']})",
                      flush=True)
            per_round.append(results)
    summary = {}
    for kind in kinds:
        plain = [r[(kind, "plain")]["rps"] for r in per_round]
        summary[kind] = {"plain_rps": statistics.median(plain)}
        for mode in MODES[1:]:
            ratios = [r[(kind, mode)]["rps"] / r[(kind, "plain")]["rps"] for r in per_round]
            cpu = [r[(kind, mode)]["cpu_us_per_request"] / r[(kind, "plain")]["cpu_us_per_request"]
                   for r in per_round]
            summary[kind][mode] = {"quartiles": quartiles(ratios),
                                   "rps": statistics.median(r[(kind, mode)]["rps"] for r in per_round),
                                   "cpu_per_request_over_plain": round(statistics.median(cpu), 3),
                                   "cpu_per_round": [round(x, 3) for x in cpu],
                                   "per_round": [round(x, 3) for x in ratios],
                                   "over_plain": round(statistics.median(ratios), 3),
                                   "cost_percent": round((1 - statistics.median(ratios)) * 100, 1)}
    print(f"\n{'interface':<10} {'mode':<22} {'req/s':>8} {'÷ plain':>8} {'quartiles':>12} {'cost':>6} "
          f"{'CPU/req ÷ plain':>16}  per round")
    for kind, s in summary.items():
        print(f"{kind:<10} {'plain':<22} {s['plain_rps']:>8.0f}")
        for mode in MODES[1:]:
            m = s[mode]
            print(f"{kind:<10} {mode:<22} {m['rps']:>8.0f} {m['over_plain']:>8.3f} {spread(m['per_round']):>12} "
                  f"{m['cost_percent']:>5.1f}% "
                  f"{m['cpu_per_request_over_plain']:>16.3f}  {', '.join(f'{x:.2f}' for x in m['per_round'])}")
    if args.quick:
        return
    write_results("ops_pinned.json" if args.pinned else "ops.json",
                  f"wrk -t1 -c32 keep-alive, {seconds} s, {layout(args.pinned)}, hello world, output to a file",
                  [{f"{k} / {m}": v for (k, m), v in r.items()} for r in per_round], summary)


def main_interleaved(args, kinds):
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as log_dir:
        for index in range(1 if args.quick else args.rounds):
            for kind in random.sample(kinds, len(kinds)):
                names = [name for name in modes(0) if name[0] == kind]
                if args.simultaneous:
                    pairs = simultaneous_round(names, args.simultaneous, args.seconds, log_dir)
                else:
                    totals = interleaved_round(names, args.interleave, args.seconds, log_dir, args.pinned)
                    pairs = {name: (totals[name], totals[(kind, "plain")]) for name in names[1:]}
                row = {"interface": kind, "totals": {mode: t for (_, mode), (t, _) in pairs.items()}}
                for (_, mode), (t, plain) in pairs.items():
                    row[mode] = {"rps_over_plain": round(t["requests"] / plain["requests"], 3),
                                 "cpu_per_request_over_plain": round(
                                     (t["cpu_seconds"] / t["requests"]) / (plain["cpu_seconds"] / plain["requests"]), 3)}
                rounds.append(row)
                print(f"round {index + 1} {kind}: "
                      + ", ".join(f"{mode} {row[mode]['rps_over_plain']:.3f} (CPU/req {row[mode]['cpu_per_request_over_plain']:.3f})"
                                  for mode in MODES[1:]), flush=True)
    summary = {}
    print(f"\n{'interface':<10} {'mode':<22} {'req/s ÷ plain':>14} {'quartiles':>12} {'cost':>6} "
          f"{'CPU/req ÷ plain':>16} {'quartiles':>12}  per round")
    for kind in kinds:
        mine = [row for row in rounds if row["interface"] == kind]
        summary[kind] = {}
        for mode in MODES[1:]:
            ratios = [row[mode]["rps_over_plain"] for row in mine]
            cpu = [row[mode]["cpu_per_request_over_plain"] for row in mine]
            median = statistics.median(ratios)
            summary[kind][mode] = {"over_plain": round(median, 3), "cost_percent": round((1 - median) * 100, 1),
                                   "quartiles": quartiles(ratios),
                                   "per_round": ratios, "cpu_per_request_over_plain": round(statistics.median(cpu), 3),
                                   "cpu_quartiles": quartiles(cpu), "cpu_per_round": cpu}
            print(f"{kind:<10} {mode:<22} {median:>14.3f} {spread(ratios):>12} {(1 - median) * 100:>5.1f}% "
                  f"{statistics.median(cpu):>16.3f} {spread(cpu):>12}  {', '.join(f'{x:.2f}' for x in ratios)}")
    if args.quick:
        return
    if args.simultaneous:
        name = "ops_simultaneous.json"
        load = (f"wrk -t1 -c32 keep-alive, {args.simultaneous} windows of {args.seconds} s per mode and round, "
                f"each mode at the same time as plain: both clusters (1 worker each) on CPU {CLUSTER_CPU}, "
                f"their two wrk on CPU {WRK_CPU}; hello world, output to a file; one PYTHONHASHSEED per round")
    else:
        name = "ops_pinned_interleaved.json" if args.pinned else "ops_interleaved.json"
        load = (f"wrk -t1 -c32 keep-alive, {args.interleave} slices of {args.seconds} s per mode and round, "
                f"{layout(args.pinned)}, hello world, output to a file; the modes of an interface up at once, "
                "started in a new order each round, one PYTHONHASHSEED per round")
    write_results(name, load, rounds, summary)


def simultaneous_round(names, windows, seconds, log_dir):
    """--simultaneous: every mode's cluster (1 worker) and plain's on one CPU, loaded at
    the same time by a wrk each on the other CPU, for `windows` windows per mode in a
    shuffled order. The two share that CPU at every instant, so whatever the host does to
    its speed (it moved one cluster's req/s by up to 20% between 1 s slices) it does to
    both: their CPU per request is compared at the same speed. Returns {name: (mode's
    totals, plain's totals over the same windows)}."""
    clusters = {}
    try:
        start_clusters(clusters, names, log_dir, True)
        plain_name = names[0]
        pairs = {name: (new_totals(), new_totals()) for name in names[1:]}
        for _ in range(windows):
            for name in random.sample(names[1:], len(names) - 1):
                both = (clusters[name], clusters[plain_name])
                before = [cluster_cpu_seconds(c.proc.pid) for c in both]
                running = [start_wrk(c.port, seconds, True) for c in both]
                results = [finish_wrk(proc, seconds) for proc in running]
                for cluster, total, result, was in zip(both, pairs[name], results, before):
                    add_slice(total, cluster_cpu_seconds(cluster.proc.pid) - was, result, seconds)
        return pairs
    finally:
        for cluster in clusters.values():
            cluster.stop()


def quartiles(values):
    """The first and third quartile of the per-round ratios: the spread of the median."""
    if len(values) < 2:
        return None
    low, _, high = statistics.quantiles(values, n=4)
    return [round(low, 3), round(high, 3)]


def layout(pinned):
    return (f"1 worker, the cluster on CPU {CLUSTER_CPU} and wrk on CPU {WRK_CPU} (taskset)" if pinned
            else "2 workers")


def spread(values):
    q = quartiles(values)
    return f"{q[0]:.3f}-{q[1]:.3f}" if q else "-"


def write_results(name, load, rounds, summary):
    path = os.path.join(ROOT, "bench", "results", name)
    with open(path, "w") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                   "load": load, "rounds": rounds, "summary": summary}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
