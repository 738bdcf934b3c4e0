"""Draining loses no request, both servers: two generations share one listening
socket (as old and new workers do behind the primary); the old one is told to stop
while keep-alive clients send back to back and other connections sit idle.

With hand-back, an idle connection moves to the new generation (its fd over a Unix
socket, as the primary's channel carries it) and the client never sees a close;
without it, responses say Connection: close and idle connections get a grace."""
import http.client
import json
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, listening_socket  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class Client(threading.Thread):
    """Requests back to back on one keep-alive connection (http.client reconnects only
    after a response that said close); counts failures and which servers answered."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.ok = 0
        self.failures = []
        self.pids = []          # server pid per response
        self.reconnects = 0

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sock = None
        while not self.stop.is_set():
            try:
                conn.request("POST", "/echo", body=b"x" * 100)
                response = conn.getresponse()
                info = json.loads(response.read())
                if response.status != 200 or info["body"] != "x" * 100:
                    self.failures.append(response.status)
                self.ok += 1
                if conn.sock is not sock:
                    self.reconnects += sock is not None
                    sock = conn.sock
                if not self.pids or self.pids[-1] != info["pid"]:
                    self.pids.append(info["pid"])
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(repr(e))
                conn.close()
                sock = None
        conn.close()


def _idle_connections(port, count):
    conns = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        conn.getresponse().read()
        conns.append(conn)
    return conns


def _ask(conn):
    """One request on an existing connection: (pid, same socket as before?)."""
    sock = conn.sock
    conn.request("GET", "/")
    response = conn.getresponse()
    return json.loads(response.read())["pid"], conn.sock is sock


@pytest.mark.parametrize("hand_back", [True, False], ids=["hand-back", "no-hand-back"])
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_drain_drops_nothing(interface, hand_back, tmp_path):
    sock = listening_socket()
    inbox = str(tmp_path / "inbox")
    old = DirectServer(interface, sock=sock, threads=2, hand_back_to=inbox if hand_back else None)
    try:
        stop = threading.Event()
        clients = [Client(old.port, stop) for _ in range(6)]
        for client in clients:
            client.start()
        idle = _idle_connections(old.port, 8)
        time.sleep(0.5)
        with DirectServer(interface, sock=sock, threads=2, inbox=inbox) as new:
            before = time.monotonic()
            old.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # Idle connections, a request each while the old generation drains: it is
            # answered (by the new generation, on the same connection, when handed back;
            # else by the old one, saying close).
            answers = [_ask(conn) for conn in idle]
            code = old.stop(timeout=20)
            assert code == 0, old.proc.stderr.read().decode(errors="replace")[-3000:]
            stopped_in = time.monotonic() - before
            time.sleep(0.5)  # the clients go on against the new generation
            stop.set()
            for client in clients:
                client.join(15)
            failures = [f for client in clients for f in client.failures]
            assert failures == [], failures
            assert all(client.ok > 0 for client in clients)
            assert all(client.pids[-1] == new.pid for client in clients), [c.pids for c in clients]
            if hand_back:
                assert all(pid == new.pid and same for pid, same in answers)  # never saw a close
                assert sum(client.reconnects for client in clients) == 0
            assert stopped_in < 10
            for conn in idle:
                conn.close()
    finally:
        if old.proc.poll() is None:
            old.kill()
        old.__exit__(None, None, None)
        sock.close()
