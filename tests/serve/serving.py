"""Helpers for the serve-level tests: run serve.wsgi/serve.asgi in a child process
(tests/serve/direct.py) on a listening socket of ours, and talk raw HTTP to it."""
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DIRECT = os.path.join(HERE, "direct.py")
APPS = {"wsgi": "echo_request:wsgi_app", "asgi": "echo_request:asgi_app"}


def listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


class DirectServer:
    """A server child: ``with DirectServer("wsgi", settings={...}) as server: server.port``."""

    def __init__(self, interface, app=None, settings=None, threads=None, sock=None,
                 inbox=None, hand_back_to=None, env=None):
        self.sock = sock or listening_socket()
        self.own_sock = sock is None
        self.port = self.sock.getsockname()[1]
        cmd = [sys.executable, DIRECT, interface, app or APPS[interface], "--fd", str(self.sock.fileno()),
               "--settings", json.dumps(settings or {})]
        if threads:
            cmd += ["--threads", str(threads)]
        if inbox:
            cmd += ["--inbox", inbox]
        if hand_back_to:
            cmd += ["--hand-back-to", hand_back_to]
        self.proc = subprocess.Popen(cmd, pass_fds=[self.sock.fileno()], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.stderr = b""
        self._wait_ready()

    def _wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                line = self.proc.stdout.readline()
                if line.strip() == b"READY":
                    return
                if not line:
                    break
        self.kill()
        raise AssertionError(f"server did not start: {self.proc.stderr.read().decode(errors='replace')}")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=15):
        """SIGTERM (drain), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return code

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                self.stop()
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.stderr = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()
            if self.own_sock:
                self.sock.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def connect(port, timeout=10):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Responses:
    """Reads HTTP/1.1 responses off a socket: ``next()`` -> (status, headers, body)
    or None when the server closed."""

    def __init__(self, sock, head_request=False):
        self.sock = sock
        self.buffer = b""
        self.head_request = head_request

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data

    def next(self):
        try:
            while b"\r\n\r\n" not in self.buffer:
                self._fill()
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
            names = {name.lower(): value for name, value in headers}
            body = b""
            if self.head_request or status in (204, 304) or status < 200:
                pass
            elif "content-length" in names:
                length = int(names["content-length"])
                while len(self.buffer) < length:
                    self._fill()
                body, self.buffer = self.buffer[:length], self.buffer[length:]
            elif names.get("transfer-encoding") == "chunked":
                while True:
                    while b"\r\n" not in self.buffer:
                        self._fill()
                    size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(self.buffer) < size + 2:
                        self._fill()
                    body += self.buffer[:size]
                    self.buffer = self.buffer[size + 2:]
                    if size == 0:
                        break
            else:
                try:
                    while True:
                        self._fill()
                except EOFError:
                    body, self.buffer = self.buffer, b""
            return status, headers, body
        except EOFError:
            return None

    def closed(self, timeout=5):
        """True if the server closes the connection (nothing more comes) within timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b"" and not self.buffer
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionError:
            return True


def get(port, path="/", headers=b"", timeout=10):
    """One request on a new connection: (status, headers, body)."""
    with connect(port, timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path.encode(), headers))
        return Responses(sock).next()
