"""The control socket: ``pyclusterc status | reload | restart | scale N | stop | monit |
metrics [NAME]`` talk to a running primary over a Unix socket.

The socket lives in ``$XDG_RUNTIME_DIR/pyclusterc/`` (else ``/tmp/pyclusterc-$UID/``), a
0700 directory, as ``NAME.sock`` with mode 0600. One request per connection: the client
writes one JSON line, the primary answers with one JSON line — at once for status and
metrics, when the work is done for reload, restart, scale and stop.

The primary side never blocks its loop: the listening socket and each accepted client
are watched by the cluster loop and read without blocking.
"""
import json
import os
import re
import socket
import stat
import sys
import time

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_REQUEST = 4096
COMMANDS = ("status", "reload", "restart", "scale", "stop", "metrics")


class ControlError(Exception):
    """No primary to talk to, or it refused the request: printed as one line."""


def check_name(name):
    if not _NAME.fullmatch(name or "") or name.startswith("."):
        raise ControlError(f"invalid cluster name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
    return name


def socket_dir():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "pyclusterc") if runtime else f"/tmp/pyclusterc-{os.getuid()}"


def socket_path(name):
    return os.path.join(socket_dir(), check_name(name) + ".sock")


def _private_dir(path):
    """Create the socket directory 0700, and refuse one another user could write to."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as e:
        raise ControlError(f"cannot create the control directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ControlError(f"refusing control directory {path}: it must be a directory owned by "
                           "this user with mode 0700")


# ---- client ----------------------------------------------------------------------------

def request(name, command, timeout=60.0, **fields):
    """Send one command to the primary named `name`; returns its reply (a dict)."""
    path = socket_path(name)
    if not os.path.exists(path):
        raise ControlError(f"no running cluster named {name!r} (no control socket at {path})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(f"no running cluster named {name!r} (stale control socket at {path}; "
                               "its primary has exited)") from None
        except OSError as e:
            raise ControlError(f"cannot reach cluster {name!r} at {path}: {e.strerror}") from None
        sock.sendall(json.dumps({"cmd": command, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise ControlError(f"cluster {name!r} did not answer {command!r} within {timeout:g} s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        raise ControlError(f"cluster {name!r} closed the control connection without answering {command!r}")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", f"cluster {name!r} refused {command!r}"))
    return reply


# ---- server (in the primary) -------------------------------------------------------------

class ControlServer:
    """Accepts control connections in the primary's loop; `handler(request, respond)`
    answers by calling respond(dict) now or later (once)."""

    def __init__(self, name, handler, watch, unwatch):
        self.name = check_name(name)
        self.path = socket_path(name)
        self.handler = handler
        self.watch = watch        # (fd, callback) -> token: the cluster loop's extra fds
        self.unwatch = unwatch    # (fd, token)
        self.sock = None

    def start(self):
        """Bind the socket. ControlError if a live primary already holds the name."""
        _private_dir(os.path.dirname(self.path))
        owner = self._live_owner()
        if owner is not None:
            raise ControlError(f"a cluster named {self.name!r} is already running (pid {owner}); "
                               "choose another --name")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        sock.listen(16)
        self.sock = sock
        self.token = self.watch(sock.fileno(), self._on_accept)

    def _live_owner(self):
        """The pid of the primary answering on our path, or None (stale files are removed)."""
        if not os.path.exists(self.path):
            return None
        try:
            return request(self.name, "status", timeout=2.0)["pid"]
        except ControlError:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return None

    def close(self):
        if self.sock is None:
            return
        self.unwatch(self.sock.fileno(), self.token)
        self.sock.close()
        self.sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _on_accept(self):
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            _Client(self, conn)


class _Client:
    """One control connection: read a JSON line, hand it to the handler, write the reply."""

    def __init__(self, server, conn):
        self.server = server
        self.conn = conn
        self.data = b""
        self.answered = False
        self.token = server.watch(conn.fileno(), self._on_readable)

    def _on_readable(self):
        try:
            chunk = self.conn.recv(_MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._finish()
        self.data += chunk
        if b"\n" not in self.data:
            if len(self.data) > _MAX_REQUEST:
                self.respond({"ok": False, "error": "control request too long"})
            return
        self.server.unwatch(self.conn.fileno(), self.token)
        self.token = None
        try:
            message = json.loads(self.data.partition(b"\n")[0])
            if not isinstance(message, dict) or message.get("cmd") not in COMMANDS:
                raise ValueError
        except ValueError:
            return self.respond({"ok": False, "error": f"unknown control request; use one of {', '.join(COMMANDS)}"})
        try:
            self.server.handler(message, self.respond)
        except Exception as e:  # noqa: BLE001 - a bad request must not take the primary down
            self.respond({"ok": False, "error": f"{message['cmd']} failed: {type(e).__name__}: {e}"})

    def respond(self, reply):
        if self.answered:
            return
        self.answered = True
        reply.setdefault("ok", True)
        data = json.dumps(reply).encode() + b"\n"
        try:
            self.conn.setblocking(True)
            self.conn.settimeout(1.0)  # a client that stopped reading cannot stall the loop long
            self.conn.sendall(data)
        except OSError:
            pass
        self._finish()

    def _finish(self):
        if self.token is not None:
            self.server.unwatch(self.conn.fileno(), self.token)
            self.token = None
        self.conn.close()


# ---- worker side ---------------------------------------------------------------------------

def ready():
    """In a worker: tell the primary this worker is ready (PM2's wait_ready; the primary
    waits for it during a reload when run with --wait-ready). Elsewhere: does nothing."""
    from .. import cluster
    if not cluster.is_worker:
        return
    from ..ipc.channel import KIND_CONTROL
    # cluster.py has no public call for this yet; its primary handles {"cmd": "ready"}.
    cluster.worker._channel.send_object({"cmd": "ready"}, KIND_CONTROL)


# ---- presentation (client side) ---------------------------------------------------------------

def _duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d{seconds // 3600 % 24:02d}h"


def _bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_status(reply):
    head = (f"cluster {reply['name']}: primary pid {reply['pid']}, {reply['target']} "
            f"({reply['interface']}, sched {reply['sched']}), up {_duration(reply['uptime'])}, "
            f"{len(reply['workers'])}/{reply['instances']} workers")
    if reply.get("busy"):
        head += f", {reply['busy']} in progress"
    columns = ("id", "pid", "state", "uptime", "restarts", "requests", "in-flight", "rss")
    rows = [[str(w["id"]), str(w["pid"]), w["state"], _duration(w["uptime"]), str(w["restarts"]),
             str(w["requests"]), str(w["inflight"]), _bytes(w["rss"])] for w in reply["workers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(v.rjust(w) if i not in (2,) else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def format_metrics(reply):
    """Prometheus text exposition (version 0.0.4)."""
    name = reply["name"]
    cluster_label = f'cluster="{name}"'
    lines = []

    def metric(metric_name, kind, help_text, samples):
        lines.append(f"# HELP {metric_name} {help_text}")
        lines.append(f"# TYPE {metric_name} {kind}")
        for labels, value in samples:
            lines.append(f"{metric_name}{{{labels}}} {value}")

    workers = reply["workers"]

    def per_worker(key):
        return [(f'{cluster_label},worker="{w["id"]}",pid="{w["pid"]}"', w[key] if w[key] is not None else 0)
                for w in workers]
    metric("pyclusterc_workers", "gauge", "Live worker processes.", [(cluster_label, len(workers))])
    metric("pyclusterc_workers_wanted", "gauge", "Worker count the primary keeps.",
           [(cluster_label, reply["instances"])])
    metric("pyclusterc_uptime_seconds", "gauge", "Seconds since the primary started.",
           [(cluster_label, round(reply["uptime"], 3))])
    metric("pyclusterc_restarts_total", "counter", "Workers started again after a crash or a limit.",
           [(cluster_label, reply["restarts"])])
    metric("pyclusterc_reloads_total", "counter", "Rolling reloads and restarts completed.",
           [(cluster_label, reply["reloads"])])
    metric("pyclusterc_worker_requests_total", "counter", "Requests served (scoreboard).", per_worker("requests"))
    metric("pyclusterc_worker_inflight_requests", "gauge", "Requests being served now.", per_worker("inflight"))
    metric("pyclusterc_worker_open_connections", "gauge", "Open client connections.", per_worker("connections"))
    metric("pyclusterc_worker_resident_memory_bytes", "gauge", "Resident set size.", per_worker("rss"))
    metric("pyclusterc_worker_uptime_seconds", "gauge", "Seconds since the worker started.",
           [(labels, round(value, 3)) for labels, value in per_worker("uptime")])
    metric("pyclusterc_worker_restarts", "gauge", "Restarts of this worker's slot.", per_worker("restarts"))
    return "\n".join(lines) + "\n"


def monit(name, interval=1.0, once=False, out=None):
    """Refresh the status table until Ctrl-C (or once)."""
    out = out or sys.stdout
    clear = "" if once or not out.isatty() else "\x1b[H\x1b[2J"
    while True:
        text = format_status(request(name, "status", timeout=10.0))
        out.write(clear + text + "\n")
        out.flush()
        if once:
            return
        time.sleep(interval)
