"""Running real cluster processes in tests: own session, JSON event lines, always killed."""
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time



class ClusterProcess:
    """A primary started from tests/apps (or any argv) under its own session.

    Its stdout JSON lines are collected as events; on exit the whole process group
    is SIGKILLed and reaped, whatever the test did."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        self.events = []
        self._lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @classmethod
    def app(cls, name, *args, **kw):
        return cls([sys.executable, os.path.join(APPS, name), *map(str, args)], **kw)

    @staticmethod
    def _read(stream, out):
        for line in stream:
            out.put(line.decode(errors="replace").rstrip("\n"))
        out.put(None)

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def wait_for(self, event, timeout=20, **match):
        """The first event named `event` (matching fields) not yet consumed."""
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("event") == event and all(seen.get(k) == v for k, v in match.items()) \
                    and not seen.get("_taken"):
                seen["_taken"] = True
                return seen
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} {match} within {timeout}s; events: {self.events}; "
                                     f"stderr: {''.join(self.stderr)[-2000:]}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process ended before {event}; events: {self.events}; "
                                     f"stderr: {''.join(self.stderr)[-2000:]}")
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.events.append(record)
            if record.get("event") == event and all(record.get(k) == v for k, v in match.items()):
                record["_taken"] = True
                return record

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=20):
        return self.proc.wait(timeout)

    def kill(self):
        kill_group(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def kill_group(proc):
    """SIGKILL the session a test started (start_new_session=True) and reap its leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def group_members(pgid):
    """Live (non-zombie) pids in a process group."""
    alive = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(pid))
    return alive


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def http_get(port, timeout=10):
    """One request on a new connection; returns the body."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return response_body(s)


def response_body(sock):
    """Read a Connection: close response to EOF; returns its body as text."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[-1].decode()


# ---- `python -m pyclusterc` driven as a user would --------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cli:
    """`python -m pyclusterc ARGS` in its own session; killed with its group at the end."""

    def __init__(self, *args, env=None, cwd=None, prefix=()):
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "pyclusterc", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, cwd=cwd or HERE,
                                     env={**os.environ, **(env or {})})
        self.stdout, self.stderr = [], []
        self._lines = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, sink):
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            sink.append(line)
            self._lines.put(line)

    def wait_line(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout + self.stderr):
            if time.monotonic() > deadline or self.proc.poll() is not None and self._lines.empty():
                raise AssertionError(f"no line with {text!r}; stdout={self.stdout} stderr={self.stderr}")
            try:
                self._lines.get(timeout=0.1)
            except queue.Empty:
                pass

    def finish(self, timeout=30):
        """Exit status, once the output has been read to its end."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def group_alive(self):
        """Pids still in the process group (the primary's session)."""
        return group_members(self.proc.pid)

    def kill(self):
        kill_group(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        if exc[0] is not None:  # shown by pytest with the failure
            print("cli stdout:", *self.stdout[-30:], "cli stderr:", *self.stderr[-30:], sep="\n")


def start(target, port, *extra, env=None):
    cli = Cli("run", target, "-i", 2, "-b", f"127.0.0.1:{port}", "--app-dir", APPS,
              *extra, env={"PYTHONPATH": EXAMPLES, **(env or {})})
    cli.wait_line("ready, 2 workers")
    return cli


def get(port, path="/", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wait_until(predicate, timeout=30, what="condition"):
    """Poll predicate() until it is true; AssertionError naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
