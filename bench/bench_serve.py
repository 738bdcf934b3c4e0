#!/usr/bin/env python3
"""`pyclusterc run` beside uvicorn, gunicorn and granian: hello-world req/s with wrk.

    python bench/bench_serve.py            # writes bench/results/serve.json, prints a table
    python bench/bench_serve.py --quick    # 2 s runs, prints only

Same load for everyone: 2 workers, `wrk -t1 -c64`, keep-alive and `Connection: close`,
on the same (small, shared) machine; servers run one at a time, in a shuffled order.
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


def measure(kind, name, seconds):
    port = free_port()
    argv = servers(port)[(kind, name)]
    proc = subprocess.Popen(argv, cwd=EXAMPLES, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_ready(port, proc)
        wrk(port, 1, False)  # warm up
        return {"keepalive": wrk(port, seconds, False), "close": wrk(port, seconds, True)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_serve: wrk is not installed (apt-get install wrk)")
    seconds = 2 if args.quick else 5
    order = list(servers(0))
    random.shuffle(order)
    results = {}
    for kind, name in order:
        print(f"{kind} {name} ...", file=sys.stderr, flush=True)
        try:
            results.setdefault(kind, {})[name] = measure(kind, name, seconds)
        except Exception as e:  # noqa: BLE001 - one broken peer must not lose the others
            results.setdefault(kind, {})[name] = {"error": str(e)}
    lines = ["| app | server | keep-alive req/s | p99 ms | Connection: close req/s | p99 ms |",
             "|---|---|---:|---:|---:|---:|"]
    for kind in sorted(results):
        for name, r in sorted(results[kind].items()):
            if "error" in r:
                lines.append(f"| {kind} | {name} | error: {r['error']} | | | |")
                continue
            ka, cl = r["keepalive"], r["close"]
            lines.append(f"| {kind} | {name} | {ka['rps']:,.0f} | {ka['p99_ms']} | {cl['rps']:,.0f} | {cl['p99_ms']} |")
    print("\n".join(lines))
    if not args.quick:
        record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "platform": platform.platform()},
                  "load": "wrk -t1 -c64, 2 workers each, hello world", "seconds": seconds,
                  "results": results, "table": lines}
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "results", "serve.json"), "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
