"""Load the way users make it, for the lifecycle tests: keep-alive clients sending
requests back to back on persistent connections, or a new connection per request.
Every failed request is counted; nothing is retried (a failure reconnects, and the
request it was is not sent again)."""
import socket
import threading
import time


def _read_response(sock, buffer):
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response" if not buffer else "closed mid-response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return status, headers, rest[:length], rest[length:]


class Load:
    """`clients` threads; keep_alive: each reuses one connection until the server says
    `Connection: close` (then opens a new one, as any client does)."""

    def __init__(self, port, clients=4, keep_alive=True, path="/", timeout=10.0):
        self.port, self.clients, self.keep_alive, self.path, self.timeout = port, clients, keep_alive, path, timeout
        self.ok = 0
        self.failed = 0
        self.errors = []
        self.latencies = []
        self.bodies = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)

    def _connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _client(self):
        sock, buffer = None, b""
        request = (f"GET {self.path} HTTP/1.1\r\nHost: test\r\n"
                   + ("" if self.keep_alive else "Connection: close\r\n") + "\r\n").encode()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if sock is None:
                    sock, buffer = self._connect(), b""
                sock.sendall(request)
                status, headers, body, buffer = _read_response(sock, buffer)
                if status != 200:
                    raise ConnectionError(f"status {status}")
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                with self.lock:
                    self.failed += 1
                    self.errors.append(f"{type(e).__name__}: {e}")
                if sock is not None:
                    sock.close()
                sock = None
                continue
            with self.lock:
                self.ok += 1
                self.latencies.append(time.monotonic() - started)
                if len(self.bodies) < 10000:
                    self.bodies.append(body)
            if not self.keep_alive or headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def wait_for(self, count, timeout=20):
        deadline = time.monotonic() + timeout
        while self.ok < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.ok} requests in {timeout} s (failed {self.failed}: {self.errors[:3]})")
            time.sleep(0.01)

    def summary(self):
        return f"ok={self.ok} failed={self.failed} errors={self.errors[:5]}"
