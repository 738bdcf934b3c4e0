#!/usr/bin/env python3
"""Cluster connection hand-off rate and fairness: our policies beside Node 20's cluster.

    python bench/bench_cluster.py               # writes bench/results/cluster.json, prints a table
    python bench/bench_cluster.py --quick       # 2 s runs, one repeat, prints only

Two workers each, on the same (small, shared) machine, peers interleaved in a shuffled
order per repeat, medians over the repeats:
- hand-off rate: `wrk -t1 -c64 -H 'Connection: close'` against a trivial raw-socket
  HTTP worker (read the request, write a fixed response, close);
- fairness: Jain's index over the requests each worker served, for that load and for
  keep-alive load (wrk without `Connection: close`).
The same file is the Python cluster app (`bench_cluster.py serve POLICY LOAD COUNTS_DIR`);
bench/node/cluster_http.js is Node's. Each worker keeps its request count in a file
in COUNTS_DIR named by its worker id; the bench reads the counts before and after a run.
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_APP = os.path.join(ROOT, "bench", "node", "cluster_http.js")
RESULTS = os.path.join(ROOT, "bench", "results", "cluster.json")
WORKERS = 2
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE_RESPONSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
COUNT = struct.Struct("<Q")

OURS = ("rr", "least", "sticky", "none", "reuseport")
PEERS = [("pyclusterc", p) for p in OURS] + [("node", "rr"), ("node", "none")]
HANDOFF = [("pyclusterc", p) for p in ("rr", "least", "none", "reuseport")] + [("node", "rr"), ("node", "none")]
LOADS = ("close", "keepalive")
TARGETS = {"rr_over_our_none": 0.85, "rr_over_node_rr": 1.5, "rr_jain": 0.99}


# ---- the Python cluster app ------------------------------------------------------

class Counter:
    """This worker's served-request count, in a file the bench maps too."""

    def __init__(self, counts_dir, worker_id):
        import mmap
        fd = os.open(os.path.join(counts_dir, str(worker_id)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, COUNT.size)
        self._map = mmap.mmap(fd, COUNT.size)
        os.close(fd)
        self.value = 0

    def add(self, n):
        self.value += n
        COUNT.pack_into(self._map, 0, self.value)


def serve_close(listener, counter):
    """One connection at a time: read the request, answer, close."""
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            # Under `none` the workers share one open file description, and
            # Listener.accept() toggles its O_NONBLOCK around each accept(): the
            # other worker can make our blocking accept() see EAGAIN. Retry.
            continue
        with conn:
            conn.setblocking(True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data:
                conn.sendall(CLOSE_RESPONSE)
                counter.add(1)


def serve_keepalive(listener, counter):
    """Many connections at once (wrk keeps 64 open): an event loop, uvloop if present."""
    import asyncio
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            requests = data.count(b"\r\n\r\n")  # wrk never splits a request here
            if not requests:
                return
            counter.add(requests)
            if b"Connection: close" in data:
                self.transport.write(CLOSE_RESPONSE)
                self.transport.close()
            else:
                self.transport.write(RESPONSE * requests)

    asyncio.run(listener.serve(Http))


def app(policy, load, counts_dir):
    from pyclusterc import cluster
    if cluster.is_worker:
        counter = Counter(counts_dir, cluster.worker.id)
        listener = cluster.listen(("127.0.0.1", 0))
        (serve_close if load == "close" else serve_keepalive)(listener, counter)
        return
    cluster.scheduling_policy = policy
    listening = set()

    def on_listening(worker, address):
        listening.add(worker.id)
        if len(listening) == WORKERS:
            print(json.dumps({"event": "ready", "port": address[1]}), flush=True)

    cluster.on("listening", on_listening)
    signal.signal(signal.SIGTERM, lambda *_: cluster.shutdown(timeout=2))
    for _ in range(WORKERS):
        cluster.fork()
    cluster.run()


# ---- the bench -------------------------------------------------------------------

def read_counts(kind, counts_dir):
    counts = {}
    for name in os.listdir(counts_dir):
        with open(os.path.join(counts_dir, name), "rb") as f:
            raw = f.read()
        if kind == "node":
            counts[name] = int(raw or b"0")
        elif len(raw) == COUNT.size:
            counts[name] = COUNT.unpack(raw)[0]
    return counts


def jain(values):
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


def cpu_seconds(pid):
    """utime + stime of one process, from /proc (the primary's own work)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One cluster (primary + 2 workers) in its own process group, killed as a group."""

    def __init__(self, kind, policy, load):
        self.kind = kind
        self.counts_dir = tempfile.mkdtemp(prefix="bench-cluster-")
        if kind == "node":
            argv = ["node", NODE_APP, self.counts_dir, str(WORKERS)]
            env = dict(os.environ, NODE_CLUSTER_SCHED_POLICY=policy)
        else:
            argv = [sys.executable, os.path.abspath(__file__), "serve", policy, load, self.counts_dir]
            env = dict(os.environ)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
        self.port = self._wait_ready()

    def _wait_ready(self, timeout=30):
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline:
            if not select.select([self.proc.stdout], [], [], 0.2)[0]:
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            if b'"ready"' in line:
                return json.loads(line)["port"]
        raise RuntimeError(f"{self.kind} cluster not ready (exit {self.proc.poll()}, last line {line!r})")

    def counts(self):
        return read_counts(self.kind, self.counts_dir)

    def stop(self):
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 3)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                # The primary is gone; make sure no worker of its group is left.
                os.killpg(self.proc.pid, signal.SIGKILL)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                pass
            break
        self.proc.stdout.close()
        shutil.rmtree(self.counts_dir, ignore_errors=True)


def wrk(port, seconds, load):
    argv = ["wrk", "-t1", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    if load == "close":
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": rate, "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "socket_errors": errors.group(1).strip() if errors else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def measure(kind, policy, load, seconds, flush_wait):
    server = Server(kind, policy, load)
    try:
        wrk(server.port, 1, load)          # warm up: imports, page faults, JIT
        time.sleep(flush_wait)
        before, cpu0 = server.counts(), cpu_seconds(server.proc.pid)
        result = wrk(server.port, seconds, load)
        cpu1 = cpu_seconds(server.proc.pid)
        time.sleep(flush_wait)
        after = server.counts()
    finally:
        server.stop()
    per_worker = [after.get(k, 0) - before.get(k, 0) for k in sorted(after)]
    result.update(per_worker=per_worker, jain=jain(per_worker),
                  primary_cpu_us_per_request=1e6 * (cpu1 - cpu0) / max(1, result["requests"]))
    return result


def machine():
    def run(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return None
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "node": run(["node", "--version"]),
            "wrk": (run(["wrk", "-v"]) or "").splitlines()[0] if run(["wrk", "-v"]) is not None else None,
            "loadavg_at_start": os.getloadavg()}


def label(kind, policy):
    return f"{kind} {policy}"


def summarise(runs):
    """Medians per (peer, load) over the repeats."""
    table = {}
    for (kind, policy, load), results in sorted(runs.items(), key=lambda item: PEERS.index(item[0][:2])):
        entry = table.setdefault(label(kind, policy), {})
        entry[load] = {
            "rate_median": statistics.median(r["rate"] for r in results),
            "jain_median": statistics.median(r["jain"] for r in results),
            "primary_cpu_us_per_request_median": statistics.median(r["primary_cpu_us_per_request"]
                                                                   for r in results),
            "runs": results,
        }
    return table


def ratios(table):
    rr = table["pyclusterc rr"]["close"]["rate_median"]
    out = {"rr_over_our_none": rr / table["pyclusterc none"]["close"]["rate_median"],
           "rr_over_node_rr": rr / table["node rr"]["close"]["rate_median"],
           "rr_jain_close": table["pyclusterc rr"]["close"]["jain_median"],
           "rr_jain_keepalive": table["pyclusterc rr"]["keepalive"]["jain_median"]}
    met = {"rr_over_our_none": out["rr_over_our_none"] >= TARGETS["rr_over_our_none"],
           "rr_over_node_rr": out["rr_over_node_rr"] >= TARGETS["rr_over_node_rr"],
           "rr_jain_close": out["rr_jain_close"] >= TARGETS["rr_jain"],
           "rr_jain_keepalive": out["rr_jain_keepalive"] >= TARGETS["rr_jain"]}
    return out, met


def markdown(table, ratio, met):
    lines = ["| peer (2 workers) | conn/s, Connection: close | Jain, new connections | Jain, keep-alive | keep-alive req/s | primary CPU µs/conn |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, entry in table.items():
        close, keep = entry["close"], entry["keepalive"]
        lines.append(f"| {name} | {close['rate_median']:,.0f} | {close['jain_median']:.4f} | "
                     f"{keep['jain_median']:.4f} | {keep['rate_median']:,.0f} | "
                     f"{close['primary_cpu_us_per_request_median']:.1f} |")
    lines.append("")
    lines.append(f"- rr / our none: {ratio['rr_over_our_none']:.2f} (target >= {TARGETS['rr_over_our_none']}: "
                 f"{'met' if met['rr_over_our_none'] else 'MISSED'})")
    lines.append(f"- rr / Node rr: {ratio['rr_over_node_rr']:.2f} (target >= {TARGETS['rr_over_node_rr']}: "
                 f"{'met' if met['rr_over_node_rr'] else 'MISSED'})")
    for load in ("close", "keepalive"):
        key = f"rr_jain_{load}"
        lines.append(f"- rr Jain ({load}): {ratio[key]:.4f} (target >= {TARGETS['rr_jain']}: "
                     f"{'met' if met[key] else 'MISSED'})")
    return "\n".join(lines)


def bench(args):
    facts = machine()
    runs = {}
    for repeat in range(args.repeats):
        for load in LOADS:
            order = list(PEERS)
            random.shuffle(order)
            for kind, policy in order:
                result = measure(kind, policy, load, args.seconds, args.flush_wait)
                runs.setdefault((kind, policy, load), []).append(result)
                print(f"[{repeat + 1}/{args.repeats}] {load:9} {label(kind, policy):16} "
                      f"{result['rate']:9,.0f}/s  jain {result['jain']:.4f}  per worker {result['per_worker']}"
                      f"  errors {result['socket_errors']}", file=sys.stderr, flush=True)
    table = summarise(runs)
    ratio, met = ratios(table)
    text = markdown(table, ratio, met)
    print(text)
    if not args.quick:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "machine": facts,
                       "load": {"wrk": "-t1 -c64", "seconds": args.seconds, "repeats": args.repeats,
                                "workers": WORKERS, "close": "-H 'Connection: close'",
                                "keepalive": "no extra header"},
                       "notes": ["hand-off targets use the Connection: close load; sticky hashes the client "
                                 "address, and every client here is 127.0.0.1",
                                 "primary CPU per request is utime+stime of the primary process only "
                                 "(near 0 for none/reuseport, where workers accept)"],
                       "peers": table, "ratios": ratio, "targets": TARGETS, "targets_met": met,
                       "table_markdown": text}, f, indent=2)
            f.write("\n")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        app(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s runs, one repeat, no JSON")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flush-wait", type=float, default=0.3, help="Node workers write counts every 100 ms")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2, 1
    for tool in ("wrk", "node"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_cluster: {tool} is not installed")
    bench(args)


if __name__ == "__main__":
    main()
