"""node:cluster semantics with real processes and sockets on 127.0.0.1."""
import collections
import json
import os
import signal
import socket
import sys
import textwrap
import time

import pytest

from procs import ClusterProcess, http_get, pid_alive, response_body

pytestmark = pytest.mark.timeout(90)


def test_event_order_and_disconnect():
    with ClusterProcess.app("cluster_http.py", 2, "rr") as primary:
        ready = primary.wait_for("ready")
        names = [(e["event"], e.get("id")) for e in primary.events if e["event"] != "ready"]
        for wid in (1, 2):
            mine = [name for name, i in names if i == wid]
            assert mine == ["fork", "online", "listening"], names
        primary.signal(signal.SIGUSR2)  # the primary disconnects worker 1
        primary.wait_for("disconnect", id=1)
        exit_event = primary.wait_for("exit", id=1)
        assert exit_event["code"] == 0 and exit_event["after_disconnect"] is True
        order = [e["event"] for e in primary.events if e.get("id") == 1]
        assert order.index("disconnect") < order.index("exit")
        # The remaining worker still serves the shared port.
        assert http_get(ready["port"]) == "2"


def test_listen_zero_shares_one_port():
    with ClusterProcess.app("cluster_http.py", 3, "rr") as primary:
        ready = primary.wait_for("ready")
        ports = {e["port"] for e in primary.events if e["event"] == "listening"}
        assert ports == {ready["port"]}


def test_messages_both_ways():
    with ClusterProcess.app("cluster_http.py", 2, "rr") as primary:
        primary.wait_for("ready")
        primary.signal(signal.SIGUSR1)  # primary sends {"n": id} to each worker
        for wid in (1, 2):
            assert primary.wait_for("message", id=wid)["message"] == {"echo": {"n": wid}}


@pytest.mark.parametrize("policy", ["rr", "least", "sticky", "none", "reuseport"])
def test_every_policy_serves(policy):
    with ClusterProcess.app("cluster_http.py", 2, policy) as primary:
        port = primary.wait_for("ready")["port"]
        answers = collections.Counter(http_get(port) for _ in range(40))
        assert sum(answers.values()) == 40 and set(answers) <= {"1", "2"}
        if policy == "sticky":
            assert len(answers) == 1  # one client address, one worker


def test_round_robin_fairness():
    with ClusterProcess.app("cluster_http.py", 3, "rr") as primary:
        port = primary.wait_for("ready")["port"]
        counts = collections.Counter(http_get(port) for _ in range(600))
        assert sorted(counts) == ["1", "2", "3"]
        for worker, n in counts.items():
            assert 180 <= n <= 220, counts


def test_queued_connections_survive_a_crash():
    with ClusterProcess.app("cluster_http.py", 2, "rr", "--block-first") as primary:
        ready = primary.wait_for("ready")
        port, victim = ready["port"], ready["pids"]["1"]
        clients = []
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port), timeout=15)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(s)
        time.sleep(0.5)  # worker 2 answers its half; worker 1's half stays queued
        os.kill(victim, signal.SIGKILL)
        primary.wait_for("exit", id=1)
        bodies = []
        for s in clients:
            with s:
                bodies.append(response_body(s))
        assert bodies == ["2"] * 10


def test_workers_die_with_the_primary():
    with ClusterProcess.app("cluster_http.py", 2, "rr") as primary:
        pids = list(primary.wait_for("ready")["pids"].values())
        os.kill(primary.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
        assert not any(pid_alive(p) for p in pids)


def test_address_in_use_reaches_the_worker():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with ClusterProcess.app("cluster_http.py", 1, "rr", "--port", port) as primary:
            message = primary.wait_for("message", id=1)["message"]
            assert message["listen_error"] == 98  # EADDRINUSE
            assert f"127.0.0.1:{port}" in message["text"]
            assert primary.wait_for("exit", id=1)["code"] == 3
    finally:
        taken.close()


def test_sigterm_shuts_the_cluster_down():
    with ClusterProcess.app("cluster_http.py", 2, "rr") as primary:
        pids = list(primary.wait_for("ready")["pids"].values())
        primary.signal(signal.SIGTERM)
        primary.wait_for("done")
        assert primary.wait() == 0
        assert not any(pid_alive(p) for p in pids)


SHARED_SCRIPT = textwrap.dedent("""
    import json
    from pyclusterc import cluster, Int32Array
    if cluster.is_primary:
        counter = Int32Array(4)
        worker = cluster.fork()
        worker.on("online", lambda: worker.send({"counter": counter}))
        def done(msg):
            print(json.dumps({"event": "value", "value": counter.load(0), "msg": msg}) + "\\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)
            worker.disconnect()
        worker.on("message", done)
        cluster.run()
    else:
        import threading, time
        time.sleep(0.5)  # the primary sends at "online": before this worker listens
        finished = threading.Event()
        def got(msg):
            msg["counter"].add(0, 5)
            cluster.worker.send("added")
            finished.set()
        cluster.worker.on("message", got)
        finished.wait(20)
""")


def test_shared_buffer_sent_to_a_worker_is_the_same_memory(tmp_path):
    script = tmp_path / "shared_send.py"
    script.write_text(SHARED_SCRIPT)
    with ClusterProcess([sys.executable, str(script)]) as primary:
        assert primary.wait_for("value") == {"event": "value", "value": 5, "msg": "added", "_taken": True}
        assert primary.wait() == 0


BAD_INPUT_SCRIPT = textwrap.dedent("""
    import json, threading
    from pyclusterc import cluster
    def say(**kw):
        print(json.dumps(kw) + "\\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)
    if cluster.is_primary:
        worker = cluster.fork()
        def check(msg):
            say(event="fork_in_worker", text=msg)
            try:
                worker.send(lambda: 1)
            except TypeError as e:
                say(event="unpicklable", text=str(e))
            worker.send("last")
        worker.on("message", check)
        def gone(code, sig):
            try:
                worker.send("late")
            except ConnectionError as e:
                say(event="dead", text=str(e))
        worker.on("exit", gone)
        cluster.run()
    else:
        done = threading.Event()
        received = []
        def got(m):
            received.append(m)
            done.set()
        cluster.worker.on("message", got)
        try:
            cluster.fork()
        except RuntimeError as e:
            cluster.worker.send(str(e))
        done.wait(20)
        import time; time.sleep(0.2)
        assert received == ["last"], received
""")


def test_bad_input_gives_one_line_errors(tmp_path):
    script = tmp_path / "bad_input.py"
    script.write_text(BAD_INPUT_SCRIPT)
    with ClusterProcess([sys.executable, str(script)]) as primary:
        assert "only available in the primary" in primary.wait_for("fork_in_worker")["text"]
        text = primary.wait_for("unpicklable")["text"]
        assert "not picklable" in text and "\n" not in text
        assert "worker 1 is dead" in primary.wait_for("dead")["text"]
        assert primary.wait() == 0, "".join(primary.stderr)


def test_bad_policy_and_address_in_the_primary():
    from pyclusterc import cluster
    with pytest.raises(ValueError, match="unknown scheduling policy 'fastest'; use one of rr, least"):
        cluster.scheduling_policy = "fastest"
    for bad in ("nowhere", ("127.0.0.1", 70000), "host:port", True, 3.5, "unix:"):
        with pytest.raises(ValueError, match="invalid address"):
            cluster.parse_address(bad)
    assert cluster.parse_address("[::1]:80") == (socket.AF_INET6, ("::1", 80))
    assert cluster.parse_address(8080)[1] == ("0.0.0.0", 8080)


TWO_LISTENERS_SCRIPT = textwrap.dedent("""
    import asyncio, json, os, sys, threading
    from pyclusterc import cluster
    served_port, accepted_port = int(sys.argv[1]), int(sys.argv[2])
    if cluster.is_primary:
        cluster.scheduling_policy = "rr"
        cluster.fork()
        listening = []
        def on_listening(worker, address):
            listening.append(address)
            if len(listening) == 2:
                print(json.dumps({"event": "ready"}) + "\\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)
        cluster.on("listening", on_listening)
        cluster.run()
    else:
        served = cluster.listen(("127.0.0.1", served_port))
        accepted = cluster.listen(("127.0.0.1", accepted_port))
        def accept_loop():
            for conn, peer in accepted:
                with conn:
                    blocking = [conn.getblocking(), os.get_blocking(conn.fileno())]
                    conn.sendall(json.dumps([peer, blocking]).encode())
        threading.Thread(target=accept_loop, daemon=True).start()
        class Hello(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b"served")
                transport.close()
        asyncio.run(served.serve(Hello))
""")


def _free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _read_all(sock):
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_serve_batches_and_accept_peers_across_two_listeners(tmp_path):
    """serve() reads connections in batches (and may read the other listener's);
    accept() on the other listener still gets each of its own with the client's
    address."""
    script = tmp_path / "two_listeners.py"
    script.write_text(TWO_LISTENERS_SCRIPT)
    served_port, accepted_port = _free_ports(2)
    with ClusterProcess([sys.executable, str(script), str(served_port), str(accepted_port)]) as primary:
        primary.wait_for("ready")
        for _ in range(3):
            burst = []
            for i in range(24):
                port = accepted_port if i % 4 == 0 else served_port
                burst.append((port, socket.create_connection(("127.0.0.1", port), timeout=15)))
            for port, s in burst:
                with s:
                    answer = _read_all(s)
                    if port == served_port:
                        assert answer == b"served"
                    else:
                        peer, blocking = json.loads(answer)
                        assert tuple(peer) == s.getsockname()
                        assert blocking == [True, True]  # accept() returns a blocking socket, as socket.accept()


GUARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    from pyclusterc import cluster
    if cluster.is_primary:
        cluster.setup_primary(fork=True)
        def boom():
            raise RuntimeError("a timer that raises")
        cluster.call_later(0.05, boom, keep_alive=True)
        state = {"exits": 0}
        def on_exit(worker, code, sig):
            state["exits"] += 1
            print(json.dumps({"event": "exit", "n": state["exits"]}) + "\\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)
            if state["exits"] == 1:
                cluster.fork()
                raise ValueError("an exit handler that raises")
        cluster.on("exit", on_exit)
        cluster.fork()
        cluster.run()
        print(json.dumps({"event": "done"}) + "\\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)
    else:
        sys.exit(0)
""")


def test_an_exception_in_one_callback_is_reported_and_the_loop_goes_on(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED_SCRIPT)
    with ClusterProcess([sys.executable, str(script)]) as primary:
        primary.wait_for("exit", n=1)
        primary.wait_for("exit", n=2)  # the loop ran on after the handler raised
        primary.wait_for("done")
        assert primary.proc.wait(10) == 0
        errors = "".join(primary.stderr)
    assert "a timer that raises" in errors and "an exit handler that raises" in errors
    assert errors.count("the primary goes on") == 2
