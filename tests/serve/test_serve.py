"""`pyclusterc run` serving real apps end to end: Flask, Starlette and a plain WSGI app
(behind wsgiref.validate) with -i 2, real HTTP clients on 127.0.0.1, real signals."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from procs import APPS, EXAMPLES, Cli, free_port, get, start

pytestmark = pytest.mark.timeout(90)

APPS_UNDER_TEST = [("flask_app:app", "wsgi"), ("starlette_app:app", "asgi"), ("plain_wsgi:app", "wsgi")]


@pytest.fixture(params=APPS_UNDER_TEST, ids=lambda p: p[0].split(":")[0])
def served(request):
    port = free_port()
    with start(request.param[0], port) as cli:
        yield cli, port, request.param[1]


def test_get_reaches_both_workers(served):
    cli, port, _ = served
    pids = set()
    for _ in range(20):
        status, _, body = get(port)
        assert status == 200
        pids.add(json.loads(body)["pid"])
    assert len(pids) == 2  # round-robin over two workers


def test_post_bodies_and_chunked_upload(served):
    import requests
    _, port, _ = served
    payload = os.urandom(300_000)
    r = requests.post(f"http://127.0.0.1:{port}/echo", data=payload, timeout=10)
    assert r.status_code == 200 and r.content == payload

    def pieces():  # a generator makes requests send Transfer-Encoding: chunked
        for i in range(10):
            yield bytes([i]) * 1000
    r = requests.post(f"http://127.0.0.1:{port}/echo", data=pieces(), timeout=10)
    assert r.status_code == 200 and r.content == b"".join(pieces())


def test_keep_alive_reuses_the_connection(served):
    _, port, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        first_pid = json.loads(first.read())["pid"]
        sock = conn.sock
        for _ in range(5):
            conn.request("POST", "/echo", body=b"again")
            response = conn.getresponse()
            assert response.read() == b"again"
            assert conn.sock is sock  # http.client reconnects only if the server closed
        conn.request("GET", "/")
        assert json.loads(conn.getresponse().read())["pid"] == first_pid
    finally:
        conn.close()


def test_streaming_response(served):
    _, port, _ = served
    status, headers, body = get(port, "/stream")
    assert status == 200
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(5))
    assert {k.lower(): v for k, v in headers.items()}.get("transfer-encoding") == "chunked"


@pytest.mark.parametrize("loops", [1, 2])
def test_websocket_echo_and_lifespan(loops):
    """With --threads N each of a worker's N event loops runs the lifespan."""
    from websockets.sync.client import connect
    port = free_port()
    marker = os.path.join("/tmp", f"pyclusterc-lifespan-{os.getpid()}-{port}")
    os.makedirs(marker, exist_ok=True)
    with start("starlette_app:app", port, "--kill-timeout", "5", "--threads", loops,
               env={"LIFESPAN_MARKER_DIR": marker}) as cli:
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            for text in ("hello", "world", "x" * 10000):
                ws.send(text)
                assert ws.recv(timeout=10) == text
        pids = set()
        for _ in range(20):
            info = json.loads(get(port)[2])
            assert info["started"] is True  # lifespan startup ran in this worker
            pids.add(info["pid"])
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish() == 0
        for pid in pids:  # lifespan shutdown ran in every worker, once per loop
            ran = [name for name in os.listdir(marker) if name.startswith(f"shutdown-{pid}-")]
            assert len(ran) == loops, (pids, os.listdir(marker))
    for name in os.listdir(marker):
        os.unlink(os.path.join(marker, name))
    os.rmdir(marker)


@pytest.mark.parametrize("target", ["plain_wsgi:app", "starlette_app:app", "flask_app:app"])
def test_sigterm_lets_a_slow_request_finish(target):
    port = free_port()
    with start(target, port, "--kill-timeout", "5") as cli:
        client, result = _slow_request_in_flight(port, 1.5)
        t0 = time.monotonic()
        cli.proc.send_signal(signal.SIGTERM)
        code = cli.finish()
        client.join(20)
        assert result.get("response", (None, None, None))[0::2] == (200, b"slow done"), result
        assert code == 0, cli.stderr
        assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while cli.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cli.group_alive() == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("target", ["plain_wsgi:app", "starlette_app:app"])
def test_term_to_the_whole_group_again_and_again_lets_a_slow_request_finish(target):
    """`kill -TERM -PGID`, repeated (an impatient operator; Ctrl-C twice sends INT to the
    group the same way): each worker gets the signal itself, from the primary too, and
    again while it drains. With two event loops, one loop finishes first; the later
    signals must not crash the worker or fail the request running on the other."""
    port = free_port()
    with start(target, port, "--kill-timeout", "5", "--threads", "2") as cli:
        client, result = _slow_request_in_flight(port, 1.5)
        deadline = time.monotonic() + 10
        while cli.proc.poll() is None and time.monotonic() < deadline:
            try:
                os.killpg(cli.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        code = cli.finish()
        client.join(20)
        assert result.get("response", (None, None, None))[0::2] == (200, b"slow done"), (result, cli.stderr)
        assert code == 0, cli.stderr
        assert "Traceback" not in "".join(cli.stderr), cli.stderr


def test_a_second_ctrl_c_stops_now():
    """INT drains like TERM; INT again, while draining, does not wait for --kill-timeout
    (uvicorn's second Ctrl-C), where a repeated TERM keeps draining."""
    port = free_port()
    with start("plain_wsgi:app", port, "--kill-timeout", "30") as cli:
        _slow_request_in_flight(port, 20)
        t0 = time.monotonic()
        cli.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert cli.proc.poll() is None  # draining: the slow request still runs
        cli.proc.send_signal(signal.SIGINT)
        cli.finish(timeout=10)
        assert time.monotonic() - t0 < 5
        assert any("SIGINT again: killing the workers now" in line for line in cli.stdout + cli.stderr)


def test_kill_timeout_bounds_the_wait():
    port = free_port()
    with start("plain_wsgi:app", port, "--kill-timeout", "0.5") as cli:
        _slow_request_in_flight(port, 10)
        t0 = time.monotonic()
        cli.proc.send_signal(signal.SIGTERM)
        cli.finish(timeout=10)
        assert time.monotonic() - t0 < 4


def _slow_request_in_flight(port, seconds):
    """GET /slow?s=SECONDS on a thread, in flight when this returns: (thread, result),
    result["response"] once answered, or result["error"]."""
    result = {}

    def ask():
        try:
            result["response"] = get(port, f"/slow?s={seconds}", timeout=seconds + 20)
        except Exception as e:  # noqa: BLE001 - the caller's assertion shows it
            result["error"] = repr(e)
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    time.sleep(0.5)
    return thread, result


def _raw(port, data, timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_wsgi_protocol_edges():
    port = free_port()
    with start("plain_wsgi:app", port) as cli:
        # Malformed: 400, and the workers keep serving.
        assert _raw(port, b"THIS IS NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        # Header limits: 431.
        huge = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"
        assert _raw(port, huge).startswith(b"HTTP/1.1 431 ")
        # Expect: 100-continue: the interim response comes before we send the body.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"hello")
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\nhello")
        # Pipelined requests on one connection, answered in order.
        out = _raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
                         b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntwo")
        assert out.count(b"HTTP/1.1 200 ") == 2 and out.index(b"one") < out.index(b"two")
        # The PEP 3333 environ (the app is wrapped in wsgiref.validate too).
        env = json.loads(get(port, "/environ?a=1&b=%20")[2])
        assert env["PATH_INFO"] == "/environ" and env["QUERY_STRING"] == "a=1&b=%20"
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["REQUEST_METHOD"] == "GET"
        assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
        assert "HTTP_CONTENT_LENGTH" not in env and env["SERVER_PORT"] == str(port)
        # An app exception: 500 for that request, the worker lives on.
        assert get(port, "/boom")[0] == 500
        assert get(port, "/")[0] == 200
        assert not any("died" in line for line in cli.stdout)


def test_crashed_worker_is_replaced():
    port = free_port()
    with start("crashy_wsgi:app", port) as cli:
        before = {json.loads(get(port)[2])["pid"] for _ in range(10)}
        with pytest.raises((http.client.HTTPException, OSError)):
            get(port, "/crash")
        cli.wait_line("starting a new one")
        deadline = time.monotonic() + 20
        after = set()
        while len(after) < 2 and time.monotonic() < deadline:
            try:
                after.add(json.loads(get(port)[2])["pid"])
            except OSError:
                time.sleep(0.05)
        assert len(after) == 2 and after != before


def test_script_target_runs_in_each_worker():
    port = free_port()
    with Cli("run", os.path.join(APPS, "echo_script.py"), "-i", 2, env={"ECHO_PORT": str(port)}) as cli:
        cli.wait_line("[1] script worker 2 listening")  # [index]: 0..N-1
        cli.wait_line("[0] script worker 1 listening")
        bodies = {get(port)[2] for _ in range(10)}
        assert bodies == {b"script 1", b"script 2"}
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish() == 0


def test_preload_serves_flask():
    port = free_port()
    with Cli("run", "flask_app:app", "-i", 2, "-b", f"127.0.0.1:{port}", "--preload",
             "--app-dir", EXAMPLES) as cli:
        cli.wait_line("ready, 2 workers")
        pids = {json.loads(get(port)[2])["pid"] for _ in range(10)}
        assert len(pids) == 2 and cli.proc.pid not in pids
        cli.proc.send_signal(signal.SIGINT)
        assert cli.finish() == 0


def test_unix_socket_bind(tmp_path):
    path = str(tmp_path / "app.sock")
    with Cli("run", "plain_wsgi:app", "-i", 2, "-b", f"unix:{path}", "--app-dir", APPS) as cli:
        cli.wait_line("ready, 2 workers")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_fd_bind():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pyclusterc", "run", "plain_wsgi:app", "-i", "2",
                                 "-b", f"fd://{fd}", "--app-dir", APPS], pass_fds=(fd,),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert get(port)[0] == 200
                    break
                except (OSError, http.client.HTTPException):
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    finally:
        listener.close()


def test_systemd_socket_activation():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # sd_listen_fds: the sockets start at fd 3 and LISTEN_PID names the process itself.
    shell = (f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m pyclusterc run '
             f'plain_wsgi:app -i 2 --app-dir "{APPS}"')
    proc = subprocess.Popen(["bash", "-c", shell], pass_fds=(fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    listener.close()  # only the server holds it now
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert get(port, timeout=2)[0] == 200
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline, proc.stderr.peek() if proc.poll() is None else proc.communicate()
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    assert f"listening on http://127.0.0.1:{port}".encode() in out
    assert b"127.0.0.1:8000" not in out  # the default bind is not added


def test_asgi_trusts_forwarded_headers_from_allowed_ips_only():
    """As uvicorn: X-Forwarded-For/-Proto from 127.0.0.1 are trusted by default;
    --forwarded-allow-ips narrows it."""
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Connection": "close"}
    for extra, expected in (((), b"203.0.113.7 https"), (("--forwarded-allow-ips", "10.0.0.1"), b"127.0.0.1 http")):
        port = free_port()
        with start("client_asgi:app", port, *extra):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/", headers=headers)
                assert conn.getresponse().read() == expected
            finally:
                conn.close()


@pytest.mark.parametrize("sched", ["least", "sticky", "none", "reuseport"])
@pytest.mark.parametrize("target", ["hello_asgi:app", "plain_wsgi:app"])
def test_every_policy_serves_and_stops(target, sched):
    """Under none/reuseport the workers accept themselves (ASGI: the loop's own server)."""
    port = free_port()
    with start(target, port, "--sched", sched) as cli:
        for _ in range(20):
            assert get(port)[0] == 200
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish() == 0
        assert cli.group_alive() == []


@pytest.mark.parametrize("target", ["hello_asgi:app", "plain_wsgi:app"])
def test_keep_alive_closes_idle_connections(target):
    """--keep-alive SECONDS: an idle keep-alive connection is closed by the server."""
    port = free_port()
    with start(target, port, "--keep-alive", "0.5"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and not response.will_close
            started = time.monotonic()
            assert conn.sock.recv(1) == b""  # closed by the server, not by the 10 s timeout
            assert time.monotonic() - started < 3
        finally:
            conn.close()
