"""Acceptance tests for the pieces the primary calls (sd_notify, --metrics-bind, the log
sink), through `pyclusterc run` itself. Each skips, saying so, until the primary uses the
piece (the ProcessManager work); from then on it runs with the suite."""
import json
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import pyclusterc
from procs import APPS, EXAMPLES, Cli, free_port, get

pytestmark = pytest.mark.timeout(90)

PACKAGE = pathlib.Path(pyclusterc.__file__).parent


def used_by_primary(module):
    """Whether some module of the package other than `module` itself imports it."""
    pattern = re.compile(rf"^\s*(from\s+[\w.]*\b{module}\b[\w.]*\s+import|from\s+[\w.]+\s+import\s+.*\b{module}\b"
                         rf"|import\s+[\w.]*\b{module}\b)", re.M)
    return any(path.stem != module and pattern.search(path.read_text()) for path in PACKAGE.rglob("*.py"))


def run_help():
    return subprocess.run([sys.executable, "-m", "pyclusterc", "run", "--help"], capture_output=True,
                          text=True, timeout=30).stdout


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return str(path)


ENV_APP = """
import json, os


def app(environ, start_response):
    body = json.dumps(dict(os.environ)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def serve(runtime, *extra, target="plain_wsgi:app", env=None, app_dir=APPS):
    port = free_port()
    cli = Cli("run", target, "-i", 2, "-b", f"127.0.0.1:{port}", "--app-dir", app_dir, "--name", "w", *extra,
              env={"PYTHONPATH": EXAMPLES, "XDG_RUNTIME_DIR": runtime, **(env or {})})
    cli.port = port
    return cli


@pytest.mark.skipif(not used_by_primary("sdnotify"), reason="the primary does not send sd_notify messages yet")
def test_sd_notify_ready_reload_stop(runtime, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(30)
    got = queue.Queue()

    def receive():
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            got.put((time.monotonic(), dict(l.split("=", 1) for l in data.decode().split("\n"))))
    threading.Thread(target=receive, daemon=True).start()

    def next_state():
        """The next message with more than STATUS=/WATCHDOG=1."""
        while True:
            when, fields = got.get(timeout=30)
            if set(fields) - {"STATUS", "WATCHDOG"}:
                return when, fields
    try:
        (tmp_path / "envapp.py").write_text(ENV_APP)
        with serve(runtime, target="envapp:app", app_dir=tmp_path, env={"NOTIFY_SOCKET": path}) as cli:
            _, ready = next_state()
            assert ready.get("READY") == "1" and "2" in ready.get("STATUS", ""), ready
            assert get(cli.port)[0] == 200  # READY=1 means serving
            # printed before READY=1 is sent, read by the test's own pipe reader thread
            # (which may not have got to it yet when the datagram arrives)
            cli.wait_line("ready, 2 workers", timeout=10)
            env = json.loads(get(cli.port)[2])
            assert "NOTIFY_SOCKET" not in env and "PYTHONPATH" in env  # the workers do not inherit it
            cli.proc.send_signal(signal.SIGHUP)
            _, reloading = next_state()
            assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0
            _, ready = next_state()
            assert ready.get("READY") == "1"
            cli.proc.send_signal(signal.SIGTERM)
            _, stopping = next_state()
            assert stopping.get("STOPPING") == "1"
            assert cli.finish(30) == 0
    finally:
        sock.close()


@pytest.mark.skipif("--metrics-bind" not in run_help(), reason="run has no --metrics-bind yet")
@pytest.mark.parametrize("target, errors", [("plain_wsgi:app", 3), ("managed_asgi:app", 0)])
def test_metrics_endpoint_counts_and_stable_labels(runtime, target, errors):
    from prometheus_client.parser import text_string_to_metric_families
    mport = free_port()

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}
    total = 20 + errors
    with serve(runtime, "--metrics-bind", f"127.0.0.1:{mport}", target=target) as cli:
        cli.wait_line("ready, 2 workers")
        for _ in range(20):
            assert get(cli.port)[0] == 200
        for _ in range(errors):
            assert get(cli.port, "/boom")[0] == 500
        deadline = time.monotonic() + 10
        while scrape()[("pyclusterc_requests_total", (("cluster", "w"),))] < total and time.monotonic() < deadline:
            time.sleep(0.05)
        before = scrape()
        assert before[("pyclusterc_requests_total", (("cluster", "w"),))] == total
        # The histogram and status classes, counted in the scoreboard by the workers.
        assert before[("pyclusterc_request_duration_seconds_count", (("cluster", "w"),))] == total
        assert before[("pyclusterc_request_duration_seconds_bucket", (("cluster", "w"), ("le", "+Inf")))] == total
        assert before[("pyclusterc_request_duration_seconds_sum", (("cluster", "w"),))] > 0
        by_class = {}
        for (n, l), v in before.items():
            if n == "pyclusterc_worker_responses_total":
                by_class[dict(l)["status_class"]] = by_class.get(dict(l)["status_class"], 0) + v
        assert by_class == ({"2xx": 20, "5xx": errors} if errors else {"2xx": 20})
        per_worker = sum(v for (n, l), v in before.items() if n == "pyclusterc_worker_request_duration_seconds_count")
        assert per_worker == total
        labels = {l for (n, l) in before if n == "pyclusterc_worker_requests_total"}
        assert len(labels) == 2
        assert subprocess.run([sys.executable, "-m", "pyclusterc", "reload", "w"], timeout=60,
                              env={**os.environ, "XDG_RUNTIME_DIR": runtime}).returncode == 0
        after = {l for (n, l) in scrape() if n == "pyclusterc_worker_requests_total"}
        assert after == labels  # worker ids, not pids: the series survive the reload


@pytest.mark.skipif("--log-file" not in run_help(), reason="run has no --log-file yet")
def test_log_files_json_and_usr1_reopen(runtime, tmp_path):
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with serve(runtime, "--log-file", out, "--error-log-file", err, "--log-format", "json",
               "--access-log") as cli:
        deadline = time.monotonic() + 30
        while not (out.exists() and "ready, 2 workers" in out.read_text()):
            assert time.monotonic() < deadline, cli.stdout
            time.sleep(0.05)
        get(cli.port, "/before")
        while "/before" not in out.read_text():  # the relay writes it a moment after the response
            assert time.monotonic() < deadline, cli.stdout
            time.sleep(0.05)
        os.rename(out, tmp_path / "out.log.1")
        cli.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not out.exists():  # reopened: a new file by the old name
            assert time.monotonic() < deadline and cli.proc.poll() is None
            time.sleep(0.05)
        get(cli.port, "/after")
        time.sleep(0.5)
        old = [json.loads(l) for l in (tmp_path / "out.log.1").read_text().splitlines()]
        new = [json.loads(l) for l in out.read_text().splitlines()]
        assert any(r["worker"] == "primary" and "ready, 2 workers" in r["message"] for r in old)
        assert any("/before" in r["message"] for r in old) and not any("/before" in r["message"] for r in new)
        assert any("/after" in r["message"] and isinstance(r["worker"], int) for r in new)
        assert cli.proc.poll() is None  # USR1 did not kill the primary


@pytest.mark.parametrize("target", ["plain_wsgi:app", "managed_asgi:app"])
def test_access_log_on_by_default_and_every_line_kept(runtime, target):
    """`run` logs every request by default (batched in the worker: no line may be lost,
    the last ones included when the cluster stops), and --no-access-log turns it off."""
    import http.client
    for extra, expected in (((), 60), (("--no-access-log",), 0)):
        with serve(runtime, *extra, target=target) as cli:
            cli.wait_line("ready, 2 workers")
            for _ in range(3):  # keep-alive clients, back to back
                conn = http.client.HTTPConnection("127.0.0.1", cli.port, timeout=10)
                for i in range(20):
                    conn.request("GET", f"/logged?i={i}")
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                conn.close()
            cli.proc.send_signal(signal.SIGTERM)
            assert cli.finish(30) == 0
            # The request line as sent, query string included; every request once.
            lines = [line for line in cli.stdout if re.search(r'"GET /logged\?i=\d+ HTTP/1\.1" 200$', line)]
            assert len(lines) == expected, cli.stdout[-10:]
            if expected:
                assert sorted(re.search(r"i=(\d+)", line).group(1) for line in lines) == sorted(
                    str(i) for _ in range(3) for i in range(20))
            # Each line has the relay's stamp and the worker id in front.
            assert all(re.match(r"\S+ \[[01]\] 127\.0\.0\.1 - ", line) for line in lines)


@pytest.mark.parametrize("target", ["plain_wsgi:app", "managed_asgi:app"])
def test_access_log_and_metrics_together_count_pipelined_and_kept_alive_requests(runtime, target):
    """Both on at once (the servers' timed paths: one class of cycle for both under ASGI):
    keep-alive requests back to back and pipelined bursts are each logged once and each
    counted once in the histogram."""
    from loadgen import _read_response
    from prometheus_client.parser import text_string_to_metric_families
    mport = free_port()
    bursts, burst = 4, 8
    with serve(runtime, "--metrics-bind", f"127.0.0.1:{mport}", target=target) as cli:
        cli.wait_line("ready, 2 workers")
        for b in range(bursts):
            with socket.create_connection(("127.0.0.1", cli.port), timeout=10) as sock:
                # A burst in one write (pipelined), then the same number back to back.
                sock.sendall(b"".join(b"GET /piped?b=%d&i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (b, i)
                                      for i in range(burst)))
                rest = b""
                for _ in range(burst):
                    status, _, _, rest = _read_response(sock, rest)
                    assert status == 200
                for i in range(burst):
                    sock.sendall(b"GET /piped?b=%d&back=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (b, i))
                    status, _, _, rest = _read_response(sock, rest)
                    assert status == 200
        total = bursts * burst * 2
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
                got = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
            count = got[("pyclusterc_request_duration_seconds_count", (("cluster", "w"),))]
            if count >= total or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert count == total
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish(30) == 0
    lines = [re.search(r'"GET /piped\?(\S+) HTTP/1\.1" 200$', line) for line in cli.stdout]
    queries = [match.group(1) for match in lines if match]
    assert len(queries) == total, cli.stdout[-10:]
    assert set(queries) == {f"b={b}&{kind}={i}" for b in range(bursts) for kind in ("i", "back")
                            for i in range(burst)}


@pytest.mark.parametrize("target", ["django_site:application", "django_site:asgi_application"])
def test_django_not_found_is_printed_once(runtime, target):
    """Django's own handler prints its 404 warning; nothing of ours (a root logger set up
    in the worker) prints it again. Two 404s, each line relayed with the worker id."""
    with serve(runtime, target=target) as cli:
        cli.wait_line("ready, 2 workers")
        for index in range(2):
            assert get(cli.port, f"/missing-{index}")[0] == 404
        assert get(cli.port, "/")[2] == b"django ok"
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish(30) == 0
    for index in range(2):
        lines = [line for line in cli.stdout + cli.stderr if f"Not Found: /missing-{index}" in line]
        assert len(lines) == 1, lines
        assert re.match(r"\S+ \[[01]\] Not Found: ", lines[0]), lines  # stamped, with the worker id
