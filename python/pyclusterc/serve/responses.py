"""What both servers add to responses: the Date line, the server header and
``--header`` entries, error responses, and the access log line."""
import fcntl
import os
import struct
import sys
import termios
import threading
import time
from email.utils import formatdate

from .._lowlevel.native import ffi, lib, os_error

SERVER = b"pyclusterc"

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
            414: b"URI Too Long", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}


class Date:
    """The Date header line, formatted once per second."""

    def __init__(self):
        self.second = 0
        self.value = b""

    def header(self):
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


def server_headers(settings):
    """(name, value) bytes pairs added to every response: server (unless
    --no-server-header, or a --header names one) and the --header entries."""
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in settings.header]
    if settings.server_header and not any(name.lower() == b"server" for name, _ in extra):
        extra.insert(0, (b"server", SERVER))
    return extra


def error_response(status, date_line, extra_headers=b""):
    """A complete response for a request we refuse, then close."""
    body = _REASONS.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s%s\r\n%s" % (status, body, len(body), date_line, extra_headers, body))


# Bytes of lines pending past which an add says to flush at once, rather than at the
# server's next timed flush (four a second).
BATCH_BYTES = 64 * 1024


class _Atoms(dict):
    """gunicorn's access log atoms; unknown ones and {name}i headers of absent fields
    are '-'."""

    def __missing__(self, key):
        if key.startswith("{") and key.endswith("}i"):
            return self.headers.get(key[1:-2].lower(), "-")
        return "-"


# The default line of one response, and its record when the log records into a slot,
# in one C call: add_request(lines, prefix, raw_head, status, started) -> 1 when the
# log should be flushed (csrc/pc_lines.h). Servers keep it as an attribute of their own.
add_request = lib.pc_lines_add_request


class AccessLog:
    """One line per request in gunicorn's atoms (``%(h)s %(r)s %(s)s ...``), the same for
    both servers; without a format, the default line: the client, the request line as
    it was sent (gunicorn's ``%(r)s``: the query string included) and the status,
    ``127.0.0.1 - "GET /a?b=1 HTTP/1.1" 200``.

    Lines are copied into one C buffer (``lines``, csrc/pc_lines.h) and written together
    (``flush``: the server calls it four times a second, when it stops, and when an add
    returns BATCH_BYTES or more), one write for many requests rather than one each; the
    primary's relay stamps them with the time and the worker id. Copied, not kept as
    objects: holding a quarter of a second's lines as bytes objects until the flush cost
    about 3% of a hello-world request's CPU (fresh memory for every allocation).

    The default line (``default_line`` true) is one call per response, with no Python
    object made for it: ``add_request(lines, client_prefix(host), head.raw, status,
    started)``, the prefix made once per connection; after ``record_into(slot)``
    (metrics on) that call also records the response into the scoreboard slot. It
    takes the buffer's lock: WSGI's threads and ASGI's loops add at once. With a
    format, the servers call ``wsgi()`` or ``asgi()``."""

    DEFAULT = '%(h)s - "%(r)s" %(s)s'

    def __init__(self, fmt, write=None):
        self.fmt = fmt or self.DEFAULT
        self.default_line = self.fmt == self.DEFAULT
        # Request headers are looked at only by formats that print some, and the clock
        # read only for those that print a duration (the default line does not).
        self.needs_headers = any(atom in self.fmt for atom in ("%(a)", "%(f)", "}i)"))
        self.needs_duration = any(atom in self.fmt for atom in ("%(T)", "%(D)", "%(M)", "%(L)"))
        self.write = write or _write_stdout  # called with bytes
        error = ffi.new("int *")
        lines = lib.pc_lines_new(BATCH_BYTES, error)
        if lines == ffi.NULL:
            raise os_error(error[0], "access log buffer")
        self.lines = ffi.gc(lines, lib.pc_lines_free)
        self.lock = threading.Lock()  # one flush at a time: batches leave in order
        self._recorded_into = None

    def record_into(self, slot_pointer):
        """Each add_request also records its response (status class, duration) into the
        scoreboard slot at slot_pointer (ScoreSlot.pointer)."""
        self._recorded_into = slot_pointer  # the pointer keeps the slot's mapping alive
        lib.pc_lines_record_into(self.lines, slot_pointer)

    @classmethod
    def from_settings(cls, settings):
        """None when off: --no-access-log, or --log-level above info without an
        explicit --access-log-format (as uvicorn's access logger)."""
        if settings.access_log_format:
            return cls(settings.access_log_format)
        if settings.access_log and str(getattr(settings, "log_level", "info")).lower() in ("info", "debug", "trace"):
            return cls(None)
        return None

    @staticmethod
    def client_prefix(host):
        """The default line up to the request line, for a client address (str)."""
        return ('%s - "' % (host or "-")).encode("utf-8", "backslashreplace")

    def line(self, client, method, path, query, protocol, status, sent, seconds, headers):
        atoms = _Atoms(
            h=client, l="-", u="-", m=method, U=path, q=query, H=protocol,
            r=f"{method} {path}{'?' + query if query else ''} {protocol}",
            s=str(status)[:3], S=str(status)[:3], B=str(sent), b=str(sent) if sent else "-",
            t=time.strftime("[%d/%b/%Y:%H:%M:%S %z]"), T=str(int(seconds)),
            D=str(int(seconds * 1e6)), M=str(int(seconds * 1e3)), L=f"{seconds:.6f}",
            p=f"<{os.getpid()}>")
        atoms.headers = headers
        atoms["f"] = headers.get("referer", "-")
        atoms["a"] = headers.get("user-agent", "-")
        try:
            return self.fmt % atoms
        except (TypeError, ValueError, KeyError):
            return self.DEFAULT % atoms

    def add(self, line):
        """A line (str, without its newline)."""
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if lib.pc_lines_add(self.lines, data, len(data)):
            self.flush()

    def flush(self):
        with self.lock:  # one write at a time, the lines in the order they were added
            count = lib.pc_lines_pending(self.lines)
            if count > 0:
                out = ffi.new("char[]", count)
                # Lines added since pending() stay for the next flush.
                self.write(ffi.buffer(out, lib.pc_lines_take(self.lines, out, count))[:])

    def seconds_since(self, started):
        """The duration a format prints: 0 unless it prints one (the clock is not read)."""
        return time.monotonic() - started if self.needs_duration and started else 0.0

    # wsgi() and asgi(): once per response, for a log with a format; started as
    # time.monotonic() at the request's start, or 0.0 when no duration is used
    # (serve.responses.clock_needed).
    def wsgi(self, environ, status, sent, started):
        headers = {}
        if self.needs_headers:
            headers = {key[5:].lower().replace("_", "-"): value for key, value in environ.items()
                       if key.startswith("HTTP_")}
        self.add(self.line(environ["REMOTE_ADDR"], environ["REQUEST_METHOD"],
                           environ["SCRIPT_NAME"] + environ["PATH_INFO"], environ["QUERY_STRING"],
                           environ["SERVER_PROTOCOL"], status, sent, self.seconds_since(started), headers))

    def asgi(self, scope, status, sent, started):
        client = scope["client"]
        headers = {}
        if self.needs_headers:
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        self.add(self.line(client[0] if client else "-", scope["method"], scope["path"],
                           scope["query_string"].decode("latin-1"), f"HTTP/{scope['http_version']}",
                           status, sent, self.seconds_since(started), headers))


def clock_needed(access_log, record):
    """Whether a request's duration is used: by the metrics' histogram (record), or by
    an access-log format that prints one. Otherwise the clock is not read per request."""
    return record is not None or (access_log is not None and access_log.needs_duration)


# One write to fd 1 at a time in the process: ASGI's loops (--threads) have a log each,
# and a write longer than a pipe's atomic size could otherwise interleave two batches.
_STDOUT_LOCK = threading.Lock()


def _write_stdout(data):
    # The worker's fd 1 is its pipe to the primary's relay; an app's own prints share it,
    # so what sys.stdout holds goes first.
    with _STDOUT_LOCK:
        try:
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            while data:
                data = data[os.write(1, data):]
        except OSError:
            pass


def unread_bytes(fd):
    """Bytes the kernel holds unread for this socket (FIONREAD): closing with any makes
    it send RST instead of FIN, and the client may lose the response it was sent."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0
