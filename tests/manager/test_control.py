"""Control commands, signals and PM2-style process management of a running `pyclusterc
run`: real primaries on 127.0.0.1, a private XDG_RUNTIME_DIR per test, bounded waits,
every process group killed at the end."""
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from procs import APPS, Cli, EXAMPLES, free_port, get, wait_until

pytestmark = pytest.mark.timeout(90)


def serve(runtime_dir, target, *extra, instances=2, name="t", env=None):
    port = free_port()
    cli = Cli("run", target, "-i", instances, "-b", f"127.0.0.1:{port}", "--app-dir", APPS,
              "--name", name, *extra,
              env={"PYTHONPATH": EXAMPLES, "XDG_RUNTIME_DIR": runtime_dir, **(env or {})})
    cli.port = port
    return cli


def ctl(runtime_dir, *args, timeout=60):
    """Run a control command; (exit status, stdout, stderr)."""
    out = subprocess.run([sys.executable, "-m", "pyclusterc", *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=APPS,
                         env={**os.environ, "XDG_RUNTIME_DIR": runtime_dir})
    return out.returncode, out.stdout, out.stderr


def status_rows(runtime_dir, name="t"):
    code, out, err = ctl(runtime_dir, "status", name)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["id", "pid", "state", "cpu", "uptime", "restarts", "requests", "in-flight", "rss"]
    return [dict(zip(("id", "pid", "state", "cpu", "uptime", "restarts", "requests", "inflight"), line.split()))
            for line in lines[2:]]


def pids(runtime_dir, name="t"):
    return {int(row["pid"]) for row in status_rows(runtime_dir, name)}



def test_status_metrics_and_socket_permissions(runtime_dir):
    with serve(runtime_dir, "plain_wsgi:app") as cli:
        cli.wait_line("ready, 2 workers")
        path = os.path.join(runtime_dir, "pyclusterc", "t.sock")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        for _ in range(10):
            assert get(cli.port)[0] == 200
        rows = status_rows(runtime_dir)
        assert len(rows) == 2
        assert all(row["state"] == "serving" and row["restarts"] == "0" for row in rows)
        assert sum(int(row["requests"]) for row in rows) >= 10
        code, out, _ = ctl(runtime_dir, "metrics", "t")
        assert code == 0
        samples = dict(re.findall(r"^(pyclusterc_\w+\{[^}]*\}) (\S+)$", out, re.M))
        assert float(samples['pyclusterc_workers{cluster="t"}']) == 2
        requests = [float(v) for k, v in samples.items() if k.startswith("pyclusterc_worker_requests_total")]
        assert len(requests) == 2 and sum(requests) >= 10
        assert "# TYPE pyclusterc_worker_resident_memory_bytes gauge" in out
        code, out, _ = ctl(runtime_dir, "monit", "t", "--once")
        assert code == 0 and "in-flight" in out
        code, out, _ = ctl(runtime_dir, "stop", "t")
        assert code == 0 and "stopped" in out
        assert cli.finish(10) == 0
        assert not os.path.exists(path)
        assert cli.group_alive() == []


def open_connections(runtime_dir, name="t"):
    code, out, err = ctl(runtime_dir, "metrics", name)
    assert code == 0, err
    return sum(float(v) for v in re.findall(r"^pyclusterc_worker_open_connections\{[^}]*\} (\S+)$", out, re.M))


@pytest.mark.parametrize("target", ["hello_asgi:app", "plain_wsgi:app"])
def test_open_connections_gauge_falls_back_to_zero(runtime_dir, target):
    """Every closed connection is counted closed, whichever way the server closes it
    (uvloop detaches the socket object; the WSGI worker closes it); `least` reads it."""
    with serve(runtime_dir, target) as cli:
        cli.wait_line("ready, 2 workers")
        for _ in range(20):
            assert get(cli.port)[0] == 200
        held = socket.create_connection(("127.0.0.1", cli.port), timeout=10)
        try:
            wait_until(lambda: open_connections(runtime_dir) == 1, 10, "one open connection")
        finally:
            held.close()
        wait_until(lambda: open_connections(runtime_dir) == 0, 10, "no open connection")


def test_missing_and_stale_primary_is_one_line(runtime_dir):
    code, out, err = ctl(runtime_dir, "status", "nobody")
    assert code != 0 and err.count("\n") == 1 and "no running cluster named 'nobody'" in err
    os.makedirs(os.path.join(runtime_dir, "pyclusterc"), mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(runtime_dir, "pyclusterc", "gone.sock"))
    stale.close()  # the file stays, nobody listens
    code, out, err = ctl(runtime_dir, "reload", "gone")
    assert code != 0 and err.count("\n") == 1 and "stale control socket" in err
    code, out, err = ctl(runtime_dir, "scale", "0", "x")
    assert code != 0 and err.count("\n") == 1 and "expected a positive integer" in err
    code, out, err = ctl(runtime_dir, "status", "../etc")
    assert code != 0 and err.count("\n") == 1 and "invalid cluster name" in err


def test_a_second_primary_with_the_same_name_is_refused(runtime_dir):
    with serve(runtime_dir, "plain_wsgi:app", instances=1) as first:
        first.wait_line("ready, 1 workers")
        with serve(runtime_dir, "plain_wsgi:app", instances=1) as second:
            code = second.finish(30)
            assert code != 0
            assert any("already running" in line for line in second.stderr), second.stderr
        assert get(first.port)[0] == 200


class Load:
    """Client threads doing short requests (a new connection each) until stopped."""

    def __init__(self, port, threads=2):
        self.port = port
        self.failures = []
        self.pids = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        while not self.stopped.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    self.failures.append(f"status {response.status}")
                else:
                    self.pids.append(json.loads(body)["pid"])
            except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                self.failures.append(repr(e))
            finally:
                conn.close()

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join(15)


@pytest.mark.parametrize("target, how", [("plain_wsgi:app", "SIGHUP"), ("managed_asgi:app", "reload")])
def test_rolling_reload_under_load_drops_nothing(runtime_dir, target, how):
    with serve(runtime_dir, target) as cli:
        cli.wait_line("ready, 2 workers")
        before = pids(runtime_dir)
        load = Load(cli.port)
        try:
            wait_until(lambda: len(load.pids) >= 50, 20, "load before the reload")
            if how == "SIGHUP":
                cli.proc.send_signal(signal.SIGHUP)
                cli.wait_line("reload: replaced 2 worker(s)")
            else:
                code, out, err = ctl(runtime_dir, "reload", "t")
                assert code == 0 and "replaced 2 worker(s)" in out, err
            served_before = len(load.pids)
            wait_until(lambda: len(load.pids) >= served_before + 50, 20, "load after the reload")
        finally:
            load.stop()
        assert load.failures == [], load.failures[:5]
        # The reply comes when every new worker is ready and every old one retired; a
        # retired worker drains (finishes and hands back its connections) before it exits.
        wait_until(lambda: len(pids(runtime_dir)) == 2, 10, "the old workers gone after draining")
        after = pids(runtime_dir)
        assert not after & before  # every worker pid changed
        assert set(load.pids[-20:]) <= after
        assert all(row["restarts"] == "1" for row in status_rows(runtime_dir))


def test_restart_and_scale_and_ttin_ttou(runtime_dir):
    with serve(runtime_dir, "plain_wsgi:app") as cli:
        cli.wait_line("ready, 2 workers")
        before = pids(runtime_dir)
        code, out, err = ctl(runtime_dir, "restart", "t")
        assert code == 0 and "restart: replaced 2 worker(s)" in out, err
        # The old workers were retired when the reply came; they are gone once drained.
        wait_until(lambda: not pids(runtime_dir) & before, 10, "the old workers gone after draining")
        code, out, err = ctl(runtime_dir, "scale", "3", "t")
        assert code == 0 and "from 2 to 3" in out, err
        assert len(status_rows(runtime_dir)) == 3
        cli.proc.send_signal(signal.SIGTTOU)
        cli.wait_line("scaled from 3 to 2")
        wait_until(lambda: len(status_rows(runtime_dir)) == 2, 10, "two workers after TTOU")
        cli.proc.send_signal(signal.SIGTTIN)
        cli.wait_line("scaled from 2 to 3")
        wait_until(lambda: len(status_rows(runtime_dir)) == 3, 10, "three workers after TTIN")
        assert get(cli.port)[0] == 200


def test_wait_ready_holds_the_reload_until_ready(runtime_dir):
    with serve(runtime_dir, "managed_asgi:app", "--wait-ready", "--listen-timeout", "20",
               env={"READY_DELAY": "1.0"}) as cli:
        cli.wait_line("ready, 2 workers ready")
        assert {row["state"] for row in status_rows(runtime_dir)} == {"serving"}
        t0 = time.monotonic()
        code, out, err = ctl(runtime_dir, "reload", "t")
        assert code == 0, err
        assert time.monotonic() - t0 >= 2.0  # two workers, one after the other, 1 s each


def test_a_reload_whose_new_worker_never_gets_ready_keeps_the_old_ones(runtime_dir, tmp_path):
    """--listen-timeout bounds a new worker's start: past it the reload fails (non-zero,
    saying why) and the old workers keep serving."""
    delay_file = tmp_path / "ready_delay"
    delay_file.write_text("0.2")
    with serve(runtime_dir, "managed_asgi:app", "--wait-ready", "--listen-timeout", "1",
               instances=1, env={"READY_DELAY_FILE": str(delay_file)}) as cli:
        cli.wait_line("ready, 1 workers ready")
        before = pids(runtime_dir)
        delay_file.write_text("never")  # the new worker's app never calls ready()
        code, out, err = ctl(runtime_dir, "reload", "t")
        assert code != 0 and "not ready within --listen-timeout" in err, (out, err)
        assert pids(runtime_dir) == before
        assert get(cli.port)[0] == 200


def test_hung_worker_is_killed_and_replaced(runtime_dir):
    with serve(runtime_dir, "managed_asgi:app", "--timeout", "1.5", instances=1) as cli:
        cli.wait_line("ready, 1 workers")
        before = pids(runtime_dir)
        hang = threading.Thread(target=lambda: _quiet(get, cli.port, "/hang", 30), daemon=True)
        hang.start()
        cli.wait_line("is hung", timeout=15)
        cli.wait_line("starting a new one", timeout=10)
        wait_until(lambda: len(status_rows(runtime_dir)) == 1 and pids(runtime_dir) != before, 15, "replacement")
        assert get(cli.port)[0] == 200


def test_asgi_threads_serve_past_a_blocked_loop_and_a_stuck_loop_is_still_caught(runtime_dir):
    """--threads 2 under ASGI: two event loops in the one worker, each with its own
    lifespan. While one loop is blocked for good, the other serves; the heartbeat is the
    older loop's, so --timeout still replaces the worker."""
    with serve(runtime_dir, "managed_asgi:app", "--threads", "2", "--timeout", "4", instances=1) as cli:
        cli.wait_line("ready, 1 workers")
        (worker_pid,) = before = pids(runtime_dir)
        hang = threading.Thread(target=lambda: _quiet(get, cli.port, "/hang", 30), daemon=True)
        hang.start()
        time.sleep(0.5)  # the hang has reached a loop
        for _ in range(5):
            started = time.monotonic()
            status, _, body = get(cli.port, timeout=3)
            assert status == 200 and json.loads(body)["pid"] == worker_pid
            assert time.monotonic() - started < 1.0
        cli.wait_line("is hung", timeout=15)
        wait_until(lambda: len(status_rows(runtime_dir)) == 1 and pids(runtime_dir) != before, 15, "replacement")
        assert get(cli.port)[0] == 200


def test_max_memory_restart_replaces_gracefully(runtime_dir):
    with serve(runtime_dir, "managed_asgi:app", "--max-memory-restart", "100M", instances=1) as cli:
        cli.wait_line("ready, 1 workers")
        before = pids(runtime_dir)
        assert get(cli.port, "/grow")[0] == 200
        assert get(cli.port, "/grow")[0] == 200
        cli.wait_line("--max-memory-restart", timeout=15)
        wait_until(lambda: pids(runtime_dir) != before and len(status_rows(runtime_dir)) == 1, 15, "replacement")
        assert not any("died" in line for line in cli.stdout)


def test_max_requests_replaces_the_worker(runtime_dir):
    with serve(runtime_dir, "plain_wsgi:app", "--max-requests", "20", instances=1) as cli:
        cli.wait_line("ready, 1 workers")
        before = pids(runtime_dir)
        for _ in range(25):
            assert get(cli.port)[0] == 200
        cli.wait_line("--max-requests 20", timeout=15)
        wait_until(lambda: pids(runtime_dir) != before, 15, "replacement")
        assert get(cli.port)[0] == 200


def test_max_restarts_and_backoff(runtime_dir):
    t0 = time.monotonic()
    with serve(runtime_dir, "managed_asgi:app", "--max-restarts", "3", "--min-uptime", "5",
               "--exp-backoff-restart-delay", "0.2", instances=1, env={"CRASH_AFTER": "0.3"}) as cli:
        code = cli.finish(60)
    assert code != 0
    delays = [float(m) for line in cli.stdout for m in re.findall(r"starting a new one in ([\d.]+) s", line)]
    assert delays == pytest.approx([0.2, 0.3, 0.45], rel=0.01), cli.stdout
    errors = [line for line in cli.stderr if line.startswith("pyclusterc: error:")]
    assert len(errors) == 1 and "keeps crashing" in errors[0] and "--max-restarts is 3" in errors[0]
    assert time.monotonic() - t0 < 40


def test_a_reload_serves_the_new_code_without_preload(runtime_dir, tmp_path):
    """Workers are forked from the primary but import the app after the fork."""
    app = tmp_path / "versioned_app.py"
    source = ("def app(environ, start_response):\n"
              "    start_response('200 OK', [('Content-Length', '2')])\n    return [b'{}']\n")
    app.write_text(source.format("v1"))
    port = free_port()
    with Cli("run", "versioned_app:app", "-i", 2, "-b", f"127.0.0.1:{port}", "--app-dir", str(tmp_path),
             "--name", "t", env={"XDG_RUNTIME_DIR": runtime_dir}) as cli:
        cli.wait_line("ready, 2 workers")
        assert get(port)[2] == b"v1"
        app.write_text(source.format("v2") + "# a different size, so no stale bytecode\n")
        code, out, err = ctl(runtime_dir, "reload", "t")
        assert code == 0, err
        assert {get(port)[2] for _ in range(6)} == {b"v2"}


def test_a_reload_to_a_broken_app_keeps_the_old_workers(runtime_dir, tmp_path):
    app = tmp_path / "flaky_app.py"
    app.write_text("import os\n\ndef app(environ, start_response):\n"
                   "    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n")
    port = free_port()
    with Cli("run", "flaky_app:app", "-i", 2, "-b", f"127.0.0.1:{port}", "--app-dir", str(tmp_path),
             "--name", "t", env={"XDG_RUNTIME_DIR": runtime_dir}) as cli:
        cli.wait_line("ready, 2 workers")
        before = pids(runtime_dir)
        app.write_text("raise RuntimeError('broken on purpose')\n")
        code, out, err = ctl(runtime_dir, "reload", "t")
        assert code != 0 and "broken on purpose" in err  # the app's own error
        assert pids(runtime_dir) == before
        assert get(port)[0] == 200


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the hung request's connection dies with its worker
        pass
