"""The control socket: ``pyclusterc status | reload | restart | scale N | stop | monit |
metrics [NAME]`` talk to a running primary over a Unix socket.

The socket lives in ``$XDG_RUNTIME_DIR/pyclusterc/`` (else ``/tmp/pyclusterc-$UID/``), a
0700 directory, as ``NAME.sock`` with mode 0600. One request per connection: the client
writes one JSON line, the primary answers with one JSON line — at once for status and
metrics, when the work is done for reload, restart, scale and stop.

The primary side never blocks its loop: the listening socket and each accepted client
are watched by the cluster loop and read without blocking. The presentation of replies
(tables, monit) is the CLI's: ``cli/monit.py``; Prometheus text is ``manager/metrics.py``.
"""
import errno
import json
import os
import re
import socket
import stat

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
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"cluster {name!r} sent a malformed reply to {command!r}") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", f"cluster {name!r} refused {command!r}"))
    return reply


# ---- server (in the primary) -------------------------------------------------------------

_SUN_PATH_MAX = 107      # bytes of a Unix socket path (sun_path less its NUL)
MAX_CLIENTS = 32          # open control connections; more are answered "busy" and closed
CLIENT_IDLE_SECONDS = 10  # a client must send its request line within this
_ACCEPT_PAUSE = 0.5       # out of fds: accept again after this, instead of spinning


class ControlServer:
    """Accepts control connections in the primary's loop; ``handler(request, respond)``
    answers by calling respond(dict) now or later (once). ``loop`` is the cluster module
    (its ``watch_fd``, ``unwatch_fd`` and ``call_later``). Nothing a client sends can raise
    out of here or stall the loop: long lines, bad JSON, idle and surplus clients get an
    error reply (or a close), and running out of fds pauses accepting for a moment."""

    def __init__(self, name, handler, loop):
        self.name = check_name(name)
        self.path = socket_path(name)
        self.handler = handler
        self.loop = loop
        self.sock = None
        self.token = None
        self.clients = set()

    def start(self):
        """Bind the socket. ControlError if a live primary already holds the name."""
        _private_dir(os.path.dirname(self.path))
        owner = self._live_owner()
        if owner is not None:
            raise ControlError(f"a cluster named {self.name!r} is already running (pid {owner}); "
                               "choose another --name")
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise ControlError(f"cannot create the control socket {self.path}: the path has "
                               f"{len(os.fsencode(self.path))} bytes, a Unix socket at most {_SUN_PATH_MAX}; "
                               "use a shorter --name or XDG_RUNTIME_DIR")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {e.strerror or e}") from None
        finally:
            os.umask(old_umask)
        sock.listen(16)
        self.sock = sock
        self._watch_accept()

    def fileno(self):
        return self.sock.fileno() if self.sock is not None else -1

    def _watch_accept(self):
        if self.sock is not None and self.token is None:
            self.token = self.loop.watch_fd(self.sock.fileno(), self._on_accept)

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
        for client in list(self.clients):
            client.finish()
        if self.sock is None:
            return
        if self.token is not None:
            self.loop.unwatch_fd(self.token)
            self.token = None
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
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Level-triggered: watching on would wake the loop at once, forever.
                    self.loop.unwatch_fd(self.token)
                    self.token = None
                    self.loop.call_later(_ACCEPT_PAUSE, self._watch_accept)
                return
            conn.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS:
                _send_line(conn, {"ok": False, "error": f"too many control connections (at most {MAX_CLIENTS}); try again"})
                conn.close()
                continue
            self.clients.add(_Client(self, conn))


def _send_line(conn, reply):
    """One reply line, without blocking: it is small and the socket buffer takes it; a
    client that does not read it loses it rather than stalling the primary."""
    try:
        conn.send(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass


class _Client:
    """One control connection: read a JSON line, hand it to the handler, write the reply."""

    def __init__(self, server, conn):
        self.server = server
        self.conn = conn
        self.data = b""
        self.answered = False
        self.token = server.loop.watch_fd(conn.fileno(), self._on_readable)
        self.idle = server.loop.call_later(CLIENT_IDLE_SECONDS, self._on_idle)

    def _on_idle(self):
        self.respond({"ok": False, "error": f"no complete request within {CLIENT_IDLE_SECONDS} s"})

    def _stop_reading(self):
        if self.token is not None:
            self.server.loop.unwatch_fd(self.token)
            self.token = None

    def _on_readable(self):
        try:
            chunk = self.conn.recv(_MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self.finish()
        self.data += chunk
        if b"\n" not in self.data:
            if len(self.data) > _MAX_REQUEST:
                self.respond({"ok": False, "error": f"control request too long (at most {_MAX_REQUEST} bytes)"})
            return
        self._stop_reading()
        self.idle.cancel()
        line = self.data.partition(b"\n")[0]
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, or nested too deep to parse
            message = None
        if not isinstance(message, dict) or message.get("cmd") not in COMMANDS:
            return self.respond({"ok": False, "error": "malformed control request: expected one JSON "
                                 f"object line with \"cmd\" one of {', '.join(COMMANDS)}"})
        try:
            self.server.handler(message, self.respond)
        except Exception as e:  # noqa: BLE001 - a bad request must not take the primary down
            self.respond({"ok": False, "error": f"{message['cmd']} failed: {type(e).__name__}: {e}"})

    def respond(self, reply):
        if self.answered:
            return
        self.answered = True
        reply.setdefault("ok", True)
        _send_line(self.conn, reply)
        self.finish()

    def finish(self):
        self._stop_reading()
        self.idle.cancel()
        self.server.clients.discard(self)
        self.conn.close()


def running_clusters():
    """Names of the clusters whose control sockets are in this user's directory
    (stale sockets of exited primaries are left out)."""
    directory = socket_dir()
    try:
        names = sorted(entry[:-5] for entry in os.listdir(directory) if entry.endswith(".sock"))
    except OSError:
        return []
    alive = []
    for name in names:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(os.path.join(directory, name + ".sock"))
            alive.append(name)
        except OSError:
            pass
        finally:
            probe.close()
    return alive


def resolve_name(name):
    """The cluster a control command is for: the one named, or the only one running."""
    if name is not None:
        return check_name(name)
    running = running_clusters()
    if len(running) == 1:
        return running[0]
    if not running:
        raise ControlError("no running cluster (start one with `pyclusterc run TARGET`)")
    raise ControlError(f"{len(running)} clusters are running ({', '.join(running)}); name one")
