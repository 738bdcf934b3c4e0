#!/usr/bin/env python3
"""Instructions per request of the serving code, counted by valgrind (cachegrind), for
this tree beside the serving code of a base commit: a CPU measure
that the noisy 2-core machine does not move, to find and check hot-path changes that
wrk's req/s cannot resolve.

    python bench/bench_instructions.py --base 85037b6
    python bench/bench_instructions.py --base 85037b6 --only asgi --requests 1000,3000

Each server runs in one process under `valgrind --tool=cachegrind --cache-sim=no`:
ours and the base through tests/serve/direct.py (serve.asgi.run / serve.wsgi.run fed by
a thread that accepts, in place of the primary: the same feeder for both; the primary
itself cannot run under valgrind 3.19, which lacks pidfd_open). A client in this process (not under valgrind) makes N
sequential requests, on one kept-alive connection or each on its own connection with
`Connection: close`; the server is stopped and its instruction total read. Two runs with
N1 and N2 requests cancel start-up and shutdown: (I(N2) - I(N1)) / (N2 - N1). What the
feeder thread and the kernel do is not the same as under the real primary, so compare
rows with each other, not with wrk's figures.
"""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_serve  # noqa: E402  (make_base: the base commit's serve/ on this tree)

ROOT = bench_serve.ROOT
PY = sys.executable
DIRECT = os.path.join(ROOT, "tests", "serve", "direct.py")
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# What each --variants name turns on: (settings, environment) for tests/serve/direct.py.
VARIANTS = {
    "plain": ({}, {}),
    "access log": ({"access_log": True, "log_level": "info"}, {}),
    "metrics": ({}, {"PYCLUSTERC_TEST_RECORD": "1"}),  # a scoreboard slot records each response
    "access log + metrics": ({"access_log": True, "log_level": "info"}, {"PYCLUSTERC_TEST_RECORD": "1"}),
}


def server_argv(kind, sock, variant):
    # As `pyclusterc run` runs them: WSGI with 8 request threads, ASGI with one loop.
    threads = ["--threads", "8"] if kind == "wsgi" else []
    return [PY, DIRECT, kind, f"hello_{kind}:app", "--fd", str(sock.fileno()), *threads,
            "--settings", json.dumps(VARIANTS[variant][0])]


def read_response(conn, buffer):
    """One whole response (Content-Length framed); returns what is left over."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"unexpected response {head[:40]!r}")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    return rest[length:]


def drive(port, requests, mode):
    if mode == "keepalive":
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            left = b""
            for _ in range(requests):
                conn.sendall(REQUEST)
                left = read_response(conn, left)
        return
    for _ in range(requests):
        # A timeout: the listening socket is ours, so a dead server still accepts.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(REQUEST_CLOSE)
            read_response(conn, b"")
            while conn.recv(65536):  # the server closes: wait for it, as wrk does
                pass


def count(kind, name, mode, requests, base_path, variant="plain"):
    """Instructions of one server process that served `requests` requests (+1 probe)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cachegrind.out")
        # A fixed hash seed: dict and set layouts, so instruction counts, repeat run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0", **VARIANTS[variant][1]}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (base_path if name == "pyclusterc base" else None,
                                                        bench_serve.EXAMPLES) if p)
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                *server_argv(kind, sock, variant)]
        proc = subprocess.Popen(argv, cwd=bench_serve.EXAMPLES, pass_fds=[sock.fileno()], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            bench_serve.wait_ready(port, proc, timeout=120)  # valgrind starts slowly
            drive(port, requests, mode)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            sock.close()
        with open(out) as f:
            summary = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
        return int(summary.group(1))


SERVERS = {"asgi": ("pyclusterc", "pyclusterc base"), "wsgi": ("pyclusterc", "pyclusterc base")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", metavar="REV", help="also count the serving code of this commit")
    parser.add_argument("--only", default="asgi,wsgi", help="asgi, wsgi or both (comma-separated)")
    parser.add_argument("--modes", default="keepalive,close")
    parser.add_argument("--variants", default="plain", help=f"comma-separated, of: {', '.join(VARIANTS)} "
                        "(the access log goes to /dev/null: its relay by the primary is not counted)")
    parser.add_argument("--requests", default="500,2000", help="N1,N2 (default 500,2000)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--output", default="instructions.json", metavar="NAME",
                        help="the file under bench/results/ to write (default instructions.json)")
    args = parser.parse_args()
    low, high = (int(n) for n in args.requests.split(","))
    base_path = bench_serve.make_base(args.base)[0] if args.base else None
    rows = []
    for kind in args.only.split(","):
        for name in SERVERS[kind]:
            if name == "pyclusterc base" and not base_path:
                continue
            for mode in args.modes.split(","):
                for variant in args.variants.split(","):
                    first = count(kind, name, mode, low, base_path, variant)
                    second = count(kind, name, mode, high, base_path, variant)
                    per_request = (second - first) / (high - low)
                    rows.append({"app": kind, "server": name, "mode": mode, "variant": variant,
                                 "instructions_per_request": round(per_request)})
                    print(f"{kind} {name} {mode} {variant}: {per_request:,.0f} instructions per request",
                          file=sys.stderr)
    print("| app | server | mode | variant | instructions per request | ÷ pyclusterc plain |")
    print("|---|---|---|---|---:|---:|")
    for row in rows:
        ours = next(r for r in rows if r["app"] == row["app"] and r["mode"] == row["mode"]
                    and r["server"] == "pyclusterc" and r["variant"] == "plain")
        print(f"| {row['app']} | {row['server']} | {row['mode']} | {row['variant']} | "
              f"{row['instructions_per_request']:,} | {row['instructions_per_request'] / ours['instructions_per_request']:.2f} |")
    if not args.no_write:
        path = os.path.join(ROOT, "bench", "results", os.path.basename(args.output))
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        with open(path, "w") as f:
            json.dump({"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "commit": commit, "base": args.base, "requests": [low, high],
                       "python": platform.python_version(), "rows": rows}, f, indent=1)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
