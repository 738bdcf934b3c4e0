#!/usr/bin/env python3
"""`pyclusterc run` beside uvicorn, gunicorn and granian: hello-world req/s with wrk,
latency under a mixed load, and worker memory.

    python bench/bench_serve.py            # writes bench/results/serve.json + serve.png
    python bench/bench_serve.py --quick    # 2 s runs, one round, prints only
    python bench/bench_serve.py --only mixed,memory --rounds 5
    python bench/bench_serve.py --only hello --base 85037b6 --servers pyclusterc --rounds 5
                                           # this tree beside the serving code of a commit
                                           # (written to bench/results/serve_base.json)

Each of hello and mixed runs in rounds (default 3): every server once per round, in a new
shuffled order. Figures are medians over the rounds; the targets are ratios ours/peer
taken within each round, then their median (the machine is small and noisy).

Same load for everyone: 2 workers, `wrk -t1 -c64`, keep-alive and `Connection: close`,
on the same (small, shared) machine; servers run one at a time, in a shuffled order.
Mixed load: 4 concurrent clients (env BENCH_MIXED_CLIENTS), a new connection per request, 10% of requests block
their worker 20 ms (GET /block); p99 of the other (fast) requests. Memory: USS per
worker (psutil) of a Flask app after 200 requests, with and without --preload.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
BIN = os.path.dirname(sys.executable)
PY = sys.executable
MIXED_CLIENTS = int(os.environ.get("BENCH_MIXED_CLIENTS", "4"))


def mixed_servers(port):
    return {
        "pyclusterc asgi --sched least": [PY, "-m", "pyclusterc", "run", "hello_asgi:app", "-i", "2",
                                          "--sched", "least", "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "pyclusterc asgi --sched least --threads 4": [PY, "-m", "pyclusterc", "run", "hello_asgi:app", "-i", "2",
                                                      "--sched", "least", "--threads", "4",
                                                      "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "pyclusterc asgi --sched rr": [PY, "-m", "pyclusterc", "run", "hello_asgi:app", "-i", "2",
                                       "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "uvicorn": [PY, "-m", "uvicorn", "hello_asgi:app", "--workers", "2", "--port", str(port),
                    "--no-access-log", "--log-level", "warning"],
        "pyclusterc wsgi (8 threads)": [PY, "-m", "pyclusterc", "run", "hello_wsgi:app", "-i", "2",
                                        "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "gunicorn gthread (8 threads)": [PY, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8",
                                         "-b", f"127.0.0.1:{port}", "hello_wsgi:app"],
    }


def memory_servers(port):
    return {
        "pyclusterc --preload": [PY, "-m", "pyclusterc", "run", "flask_app:app", "-i", "2", "--preload",
                                 "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "pyclusterc": [PY, "-m", "pyclusterc", "run", "flask_app:app", "-i", "2",
                       "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        "gunicorn --preload": [PY, "-m", "gunicorn", "-w", "2", "--preload", "-b", f"127.0.0.1:{port}",
                               "flask_app:app"],
        "gunicorn": [PY, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "flask_app:app"],
    }


BASE_PATH = None  # --base: a copy of the installed package with the base commit's serve/


def make_base(rev):
    """The installed pyclusterc with python/pyclusterc/serve/ as it was at ``rev`` (from
    git, this checkout), but for serve/options.py: the old serving code runs on the same
    C core, CLI, manager and option declarations (the serving seam is
    run(app, listeners, settings, hooks) on both sides)."""
    import tempfile
    import pyclusterc
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True,
                            text=True, check=True).stdout.strip()
    base = os.path.join(tempfile.gettempdir(), f"pyclusterc-bench-base-{commit}")
    package = os.path.join(base, "pyclusterc")
    if not os.path.isdir(package):
        shutil.copytree(os.path.dirname(pyclusterc.__file__), package,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.rmtree(os.path.join(package, "serve"))
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "python/pyclusterc/serve"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", package, "--strip-components=2"], input=archive, check=True)
        # The option declarations are the CLI's and manager's, not the serving hot path:
        # keep this tree's, so today's CLI finds what it calls (check, factories).
        shutil.copy(os.path.join(os.path.dirname(pyclusterc.__file__), "serve", "options.py"),
                    os.path.join(package, "serve", "options.py"))
    return base, commit


def servers(port):
    granian = shutil.which("granian", path=BIN)
    table = {
        ("asgi", "pyclusterc"): [PY, "-m", "pyclusterc", "run", "hello_asgi:app", "-i", "2",
                                 "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        ("asgi", "uvicorn"): [PY, "-m", "uvicorn", "hello_asgi:app", "--workers", "2", "--port", str(port),
                              "--no-access-log", "--log-level", "warning"],
        ("wsgi", "pyclusterc"): [PY, "-m", "pyclusterc", "run", "hello_wsgi:app", "-i", "2",
                                 "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        ("wsgi", "gunicorn sync"): [PY, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "hello_wsgi:app"],
        ("wsgi", "gunicorn gthread"): [PY, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8",
                                       "-b", f"127.0.0.1:{port}", "hello_wsgi:app"],
    }
    if BASE_PATH:
        for kind in ("asgi", "wsgi"):
            table[(kind, "pyclusterc base")] = table[(kind, "pyclusterc")]
    if granian:
        for kind in ("asgi", "wsgi"):
            table[(kind, "granian")] = [granian, "--interface", kind, "--workers", "2", "--host", "127.0.0.1",
                                        "--port", str(port), "--log-level", "warning", f"hello_{kind}:app"]
    return table


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server not ready")


def wrk(port, seconds, close):
    argv = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
            "socket_errors": errors.group(1).strip() if errors else None}


class Server:
    """A server under test in its own session; stopped with its whole group."""

    def __init__(self, argv, port, env=None):
        self.port = port
        self.proc = subprocess.Popen(argv, cwd=EXAMPLES, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env={**os.environ, **(env or {})})

    def __enter__(self):
        try:
            wait_ready(self.port, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        stop_group(self.proc, 5)


def stop_group(proc, timeout):
    """TERM a server's process group (it runs in a session of its own), KILL if it
    lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


def measure(kind, name, seconds):
    port = free_port()
    env = {"PYTHONPATH": BASE_PATH} if name == "pyclusterc base" else None
    with Server(servers(port)[(kind, name)], port, env):
        wrk(port, 1, False)  # warm up
        return {"keepalive": wrk(port, seconds, False), "close": wrk(port, seconds, True)}


async def _mixed_client(port, seconds, concurrency=None, block_every=10):
    """New connection per request; every block_every-th request is GET /block."""
    import asyncio
    concurrency = concurrency or MIXED_CLIENTS
    fast, slow, errors = [], [], 0
    request_fast = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    request_slow = b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + seconds

    async def one_client(index):
        nonlocal errors
        n = index
        while time.monotonic() < deadline:
            n += 1
            blocking = n % block_every == 0
            t0 = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request_slow if blocking else request_fast)
                data = await reader.read()
                writer.close()
                if not data.startswith(b"HTTP/1.1 200"):
                    raise ValueError(data[:40])
            except (OSError, ValueError):
                errors += 1
                continue
            (slow if blocking else fast).append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one_client(i) for i in range(concurrency)))
    fast.sort()

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None
    return {"fast_requests": len(fast), "slow_requests": len(slow), "errors": errors,
            "fast_p50_ms": pct(fast, 0.50), "fast_p99_ms": pct(fast, 0.99),
            "rps": round((len(fast) + len(slow)) / seconds)}


def measure_mixed(name, seconds):
    import asyncio
    port = free_port()
    with Server(mixed_servers(port)[name], port):
        asyncio.run(_mixed_client(port, 1))  # warm up
        return asyncio.run(_mixed_client(port, seconds))


def measure_memory(name):
    import psutil
    port = free_port()
    with Server(memory_servers(port)[name], port) as server:
        for _ in range(200):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
        primary = psutil.Process(server.proc.pid)
        workers = primary.children()
        uss = [w.memory_full_info().uss for w in workers]
        return {"workers": len(workers), "uss_mib_per_worker": round(sum(uss) / len(uss) / 2**20, 1),
                "primary_uss_mib": round(primary.memory_full_info().uss / 2**20, 1)}


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


# (part, ours, peer, metric): the targets, as per-round ratios ours/peer.
RATIOS = [
    ("asgi", "pyclusterc", "pyclusterc base", "keepalive"),
    ("asgi", "pyclusterc", "pyclusterc base", "close"),
    ("wsgi", "pyclusterc", "pyclusterc base", "keepalive"),
    ("wsgi", "pyclusterc", "pyclusterc base", "close"),
    ("asgi", "pyclusterc", "uvicorn", "keepalive"),
    ("asgi", "pyclusterc", "uvicorn", "close"),
    ("wsgi", "pyclusterc", "gunicorn gthread", "keepalive"),
    ("wsgi", "pyclusterc", "granian", "keepalive"),
    ("mixed", "pyclusterc asgi --sched least", "uvicorn", "fast_p99_ms"),
    ("mixed", "pyclusterc asgi --sched least --threads 4", "uvicorn", "fast_p99_ms"),
    ("mixed", "pyclusterc wsgi (8 threads)", "gunicorn gthread (8 threads)", "fast_p99_ms"),
]


def value(result, metric):
    if result is None or "error" in result:
        return None
    return result[metric]["rps"] if metric in ("keepalive", "close") else result[metric]


def run_rounds(names, measure_one, rounds):
    """Each round runs every server once, in a new shuffled order: a server's rounds are
    spread over the whole run, so a noisy minute hits everyone alike."""
    per_round = []
    for round_index in range(rounds):
        order = list(names)
        random.shuffle(order)
        got = {}
        for name in order:
            print(f"round {round_index + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
            try:
                got[name] = measure_one(name)
            except Exception as e:  # noqa: BLE001 - one broken peer must not lose the others
                got[name] = {"error": str(e)}
        per_round.append(got)
    return per_round


def summarise(per_round, name):
    """The median of each figure over the rounds, with the rounds kept."""
    runs = [r[name] for r in per_round]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]

    def med(rs):
        summary = {}
        for key in rs[0]:
            values = [r[key] for r in rs]
            if all(v is None or isinstance(v, (int, float)) for v in values):
                middle = median(values)
                summary[key] = None if middle is None else round(middle, 2)
            else:  # text (socket errors): the first round's
                summary[key] = values[0]
        return summary
    if "keepalive" in ok[0]:
        summary = {"keepalive": med([r["keepalive"] for r in ok]), "close": med([r["close"] for r in ok])}
    else:
        summary = med(ok)
    summary["rounds"] = runs
    return summary


def ratios(rounds_by_part):
    out = {}
    for part, ours, peer, metric in RATIOS:
        per_round = [value(r.get(ours), metric) / value(r.get(peer), metric)
                     for r in rounds_by_part.get(part, [])
                     if value(r.get(ours), metric) and value(r.get(peer), metric)]
        if per_round:
            label = f"{part} {metric}: {ours} / {peer}"
            out[label] = {"per_round": [round(x, 3) for x in per_round], "median": round(median(per_round), 3)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, one round, prints only")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every server for hello and mixed (default 3)")
    parser.add_argument("--only", default="hello,mixed,memory", help="comma-separated: hello, mixed, memory")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--base", metavar="REV", help="hello also runs the serving code of this commit "
                        "('pyclusterc base'), side by side with this tree's")
    parser.add_argument("--servers", metavar="TEXT", help="hello: only servers whose name contains TEXT")
    args = parser.parse_args()
    global BASE_PATH
    if args.base:
        BASE_PATH, commit = make_base(args.base)
        print(f"pyclusterc base: serve/ at {commit} ({BASE_PATH})", file=sys.stderr)
    parts = set(args.only.split(","))
    if shutil.which("wrk") is None:
        sys.exit("bench_serve: wrk is not installed (apt-get install wrk)")
    seconds = 2 if args.quick else args.seconds
    rounds = 1 if args.quick else max(1, args.rounds)
    # A comparison with an older serve/ has a file of its own: the peer tables stay as
    # they were measured.
    path = os.path.join(ROOT, "bench", "results", "serve_base.json" if args.base else "serve.json")
    record = {}
    if os.path.exists(path) and not args.base:
        with open(path) as f:
            record = json.load(f)
    results = record.get("results", {})
    rounds_by_part = {}
    if "hello" in parts:
        table = {key: argv for key, argv in servers(0).items() if not args.servers or args.servers in key[1]}
        per_round = run_rounds(list(table), lambda key: measure(*key, seconds), rounds)
        for kind in ("asgi", "wsgi"):
            results[kind] = {**(results.get(kind, {}) if args.servers else {}),
                             **{name: summarise(per_round, (k, name)) for k, name in table if k == kind}}
            rounds_by_part[kind] = [{name: r[(k, name)] for k, name in table if k == kind} for r in per_round]
    if "mixed" in parts:
        per_round = run_rounds(list(mixed_servers(0)), lambda name: measure_mixed(name, seconds), rounds)
        results["mixed"] = {name: summarise(per_round, name) for name in mixed_servers(0)}
        rounds_by_part["mixed"] = per_round
    if "memory" in parts:
        results["memory"] = {}
        for name in memory_servers(0):
            print(f"memory {name} ...", file=sys.stderr, flush=True)
            results["memory"][name] = measure_memory(name)
    if rounds_by_part:
        kept = {label: r for label, r in results.get("ratios", {}).items()
                if label.split(" ", 1)[0] not in rounds_by_part}
        results["ratios"] = {**kept, **ratios(rounds_by_part)}
    lines = tables(results)
    print("\n".join(lines))
    if not args.quick:
        record.update({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                   "platform": platform.platform()},
                       "base": args.base and f"'pyclusterc base' is serve/ at {args.base}, on this tree's core",
                       "load": "wrk -t1 -c64, 2 workers each, hello world; mixed: 4 clients, new "
                               "connection per request, 10% block 20 ms; memory: Flask, 2 workers, USS; "
                               f"hello and mixed: {rounds} rounds, medians, ratios per round",
                       "seconds": seconds, "rounds": rounds, "results": results, "table": lines})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
        if not args.base:
            chart(results, os.path.join(ROOT, "bench", "results", "serve.png"))


def tables(results):
    lines = ["| app | server | keep-alive req/s | p99 ms | Connection: close req/s | p99 ms |",
             "|---|---|---:|---:|---:|---:|"]
    for kind in ("asgi", "wsgi"):
        for name, r in sorted(results.get(kind, {}).items()):
            if "error" in r:
                lines.append(f"| {kind} | {name} | error: {r['error']} | | | |")
                continue
            ka, cl = r["keepalive"], r["close"]
            lines.append(f"| {kind} | {name} | {ka['rps']:,.0f} | {ka['p99_ms']} | {cl['rps']:,.0f} | {cl['p99_ms']} |")
    if results.get("mixed"):
        lines += ["", "| mixed load | fast p50 ms | fast p99 ms | req/s | errors |", "|---|---:|---:|---:|---:|"]
        for name, r in results["mixed"].items():
            lines.append(f"| {name} | {r['fast_p50_ms']} | {r['fast_p99_ms']} | {r['rps']:,} | {r['errors']} |")
    if results.get("ratios"):
        lines += ["", "| ratio (ours / peer, per round) | per round | median |", "|---|---|---:|"]
        for label, r in results["ratios"].items():
            lines.append(f"| {label} | {', '.join(f'{x:.2f}' for x in r['per_round'])} | {r['median']:.2f} |")
    if results.get("memory"):
        lines += ["", "| Flask, 2 workers | USS per worker MiB | primary USS MiB |", "|---|---:|---:|"]
        for name, r in results["memory"].items():
            lines.append(f"| {name} | {r['uss_mib_per_worker']} | {r['primary_uss_mib']} |")
    return lines


def chart(results, path):
    """Three panels: hello req/s, mixed-load p99 of the fast requests, USS per worker."""
    try:
        import matplotlib
    except ImportError:
        print("bench_serve: matplotlib is not installed (the bench extra): no chart", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    names, keepalive, close = [], [], []
    for kind in ("asgi", "wsgi"):
        for name, r in sorted(results.get(kind, {}).items()):
            if "error" not in r:
                names.append(f"{kind}\n{name}")
                keepalive.append(r["keepalive"]["rps"])
                close.append(r["close"]["rps"])
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], keepalive, 0.4, label="keep-alive")
    axes[0].bar([x + 0.2 for x in xs], close, 0.4, label="Connection: close")
    axes[0].set_xticks(list(xs), [n.replace("\n", " ") for n in names], fontsize=7, rotation=35, ha="right")
    axes[0].set_ylabel("req/s (higher is better)")
    axes[0].set_title("hello world, 2 workers, wrk -c64")
    axes[0].legend(fontsize=8)
    mixed = results.get("mixed", {})
    axes[1].barh(list(mixed), [r["fast_p99_ms"] for r in mixed.values()], color="tab:orange")
    axes[1].set_xlabel("p99 of fast requests, ms (lower is better)")
    axes[1].set_title("mixed load: 10% block 20 ms")
    axes[1].tick_params(axis="y", labelsize=8)
    memory = results.get("memory", {})
    axes[2].barh(list(memory), [r["uss_mib_per_worker"] for r in memory.values()], color="tab:green")
    axes[2].set_xlabel("USS per worker, MiB (lower is better)")
    axes[2].set_title("Flask app memory")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
