"""The Prometheus endpoint: prometheus_client's exposition over the status dict, parsed back
with prometheus_client.parser; served on 127.0.0.1 port 0; and over a real cluster."""
import os
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyclusterc.manager import control
from pyclusterc.manager.metrics import (LoopBridge, MetricsError, MetricsServer, loop_snapshot,
                                        parse_bind, process_cpu_seconds, render)
from procs import APPS, EXAMPLES, Cli, free_port, get

pytestmark = pytest.mark.timeout(60)


def status(**extra):
    workers = [
        {"id": 0, "pid": os.getpid(), "state": "listening", "uptime": 3.0, "restarts": 1, "requests": 7,
         "inflight": 1, "connections": 2, "rss": 1000, "queued": 3, "heartbeat_age": 0.25,
         "latency_buckets": [(0.005, 4), (0.1, 6), (float("inf"), 7)], "latency_sum": 0.5,
         "status_classes": {"2xx": 6, "5xx": 1}},
        {"id": 1, "pid": os.getpid(), "state": "listening", "uptime": 2.0, "restarts": 0, "requests": 5,
         "inflight": 0, "connections": 0, "rss": None,
         "latency_buckets": [(0.005, 5), (0.1, 5)], "latency_sum": 0.01, "status_classes": {"2xx": 5}},
    ]
    return {"name": "web", "pid": os.getpid(), "instances": 2, "uptime": 9.5, "restarts": 1,
            "reloads": 2, "queued": 4, "workers": workers, **extra}


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_exposition_parses_with_every_family():
    got = samples(render(status).decode())
    w0 = (("cluster", "web"), ("worker", "0"))
    w1 = (("cluster", "web"), ("worker", "1"))
    c = (("cluster", "web"),)
    assert got[("pyclusterc_up", ())] == 1
    assert got[("pyclusterc_workers", c)] == 2
    assert got[("pyclusterc_reloads_total", c)] == 2
    assert got[("pyclusterc_requests_total", c)] == 12
    assert got[("pyclusterc_queued_connections", c)] == 4
    assert got[("pyclusterc_worker_requests_total", w0)] == 7
    assert got[("pyclusterc_worker_queued_connections", w0)] == 3
    assert got[("pyclusterc_worker_heartbeat_age_seconds", w0)] == 0.25
    assert got[("pyclusterc_worker_resident_memory_bytes", w0)] == 1000
    assert got[("pyclusterc_worker_resident_memory_bytes", w1)] > 0  # read from /proc
    assert got[("pyclusterc_worker_cpu_seconds_total", w0)] >= 0
    assert got[("pyclusterc_worker_responses_total", tuple(sorted(w0 + (("status_class", "5xx"),))))] == 1
    # Histograms: cumulative buckets, +Inf added from `requests` when the snapshot stops short.
    assert got[("pyclusterc_worker_request_duration_seconds_bucket", tuple(sorted(w0 + (("le", "0.1"),))))] == 6
    assert got[("pyclusterc_worker_request_duration_seconds_count", w1)] == 5
    assert got[("pyclusterc_request_duration_seconds_count", c)] == 12
    assert got[("pyclusterc_request_duration_seconds_bucket", c + (("le", "0.005"),))] == 9
    assert got[("pyclusterc_request_duration_seconds_sum", c)] == pytest.approx(0.51)
    assert not any("pid" in dict(labels) for _, labels in got)  # pids change; ids do not


def test_without_latency_fields_no_histogram_and_a_failing_snapshot_is_up_0():
    plain = status()
    for w in plain["workers"]:
        del w["latency_buckets"], w["status_classes"]
    text = render(lambda: plain).decode()
    assert "request_duration" not in text
    samples(text)

    def broken():
        raise RuntimeError("loop gone")
    assert samples(render(broken).decode()) == {("pyclusterc_up", ()): 0}


def test_server_thread_and_loop_snapshot():
    calls = []

    def call_soon(callback):  # stands in for the primary loop's thread-safe scheduler
        calls.append(callback)
        callback()
    server = MetricsServer(loop_snapshot(call_soon, status), "127.0.0.1:0").start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            assert r.status == 200 and "text/plain" in r.headers["Content-Type"]
            got = samples(r.read().decode())
        assert got[("pyclusterc_workers", (("cluster", "web"),))] == 2 and calls
        with pytest.raises(MetricsError, match="cannot serve metrics on 127.0.0.1"):
            MetricsServer(status, f"127.0.0.1:{port}").start()
    finally:
        server.close()
    stuck = loop_snapshot(lambda callback: None, status, timeout=0.1)
    with pytest.raises(TimeoutError):
        stuck()


def test_loop_bridge_runs_status_on_the_loop_thread():
    """A selector loop on its own thread stands in for the primary's: status() must run
    there, never on the scraper's thread."""
    import selectors
    import threading
    selector = selectors.DefaultSelector()
    stop = threading.Event()
    ran_on = []
    registered = threading.Event()
    bridges = []

    def loop():
        bridges.append(LoopBridge(lambda fd, cb: selector.register(fd, selectors.EVENT_READ, cb)))
        registered.set()
        while not stop.is_set():
            for key, _ in selector.select(0.1):
                key.data()
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        assert registered.wait(5)

        def loop_status():
            ran_on.append(threading.get_ident())
            return status()
        snapshot = loop_snapshot(bridges[0].call_soon_threadsafe, loop_status)
        got = samples(render(snapshot).decode())
        assert got[("pyclusterc_workers", (("cluster", "web"),))] == 2
        assert ran_on == [thread.ident]
    finally:
        stop.set()
        thread.join(5)
        bridges[0].close(lambda key: selector.unregister(key.fd))
        selector.close()


def test_bad_bind_is_one_line():
    for text in ("9100", "host:port", "h:70000"):
        with pytest.raises(MetricsError, match="invalid --metrics-bind .*use HOST:PORT"):
            parse_bind(text)
    assert parse_bind("[::1]:9100") == ("::1", 9100) and parse_bind(":9100") == ("0.0.0.0", 9100)


def test_cpu_seconds_match_os_times():
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:
        pass
    mine = os.times()
    assert process_cpu_seconds(os.getpid()) == pytest.approx(mine.user + mine.system, abs=0.05)
    assert process_cpu_seconds(2 ** 22 + 1) is None


def test_over_a_real_cluster(tmp_path):
    """The collector over a live primary's status (through its control socket): the
    per-worker request counters add up to the requests made."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    port = free_port()
    env = {"PYTHONPATH": EXAMPLES, "XDG_RUNTIME_DIR": str(runtime)}
    with Cli("run", "plain_wsgi:app", "-i", 2, "-b", f"127.0.0.1:{port}", "--app-dir", APPS,
             "--name", "m", env=env) as cli:
        cli.wait_line("ready, 2 workers")
        for _ in range(9):
            assert get(port)[0] == 200
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            server = MetricsServer(lambda: control.request("m", "status", timeout=5), "127.0.0.1:0").start()
            try:
                host, mport = server.address
                deadline = time.monotonic() + 10
                while True:  # the scoreboard counts a request as it completes
                    with urllib.request.urlopen(f"http://{host}:{mport}/metrics", timeout=10) as r:
                        got = samples(r.read().decode())
                    total = got[("pyclusterc_requests_total", (("cluster", "m"),))]
                    if total == 9 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            finally:
                server.close()
        finally:
            del os.environ["XDG_RUNTIME_DIR"]
        per_worker = [v for (name, _), v in got.items() if name == "pyclusterc_worker_requests_total"]
        assert total == 9 and sum(per_worker) == 9 and len(per_worker) == 2
        # CPU time counts in clock ticks (10 ms): a forked worker that served a few requests
        # may have none yet. The series are there, one a worker, and never negative.
        cpu = [v for (name, _), v in got.items() if name == "pyclusterc_worker_cpu_seconds_total"]
        assert len(cpu) == 2 and all(v >= 0 for v in cpu)
