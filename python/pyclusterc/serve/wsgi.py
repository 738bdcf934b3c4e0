"""A threaded WSGI server for cluster workers, parsing HTTP/1.1 with httptools.

One acceptor thread (the worker's main thread) watches the listeners and the idle
keep-alive connections; a connection with data to read goes to a thread of the pool,
which reads one request, runs the app and writes the response, then hands the
connection back (gunicorn gthread's shape). Request bodies are read fully before the
app runs (spooled to a temporary file past 1 MiB), so ``wsgi.input`` never blocks on
the network and chunked uploads reach the app with a CONTENT_LENGTH.
"""
import collections
import os
import queue
import selectors
import socket
import sys
import tempfile
import threading
import time
import traceback
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

import httptools

DEFAULT_THREADS = 8
LIMITS = {
    "max_body": 100 * 1024 * 1024,   # bytes of request body -> 413
    "max_header_bytes": 64 * 1024,   # request line + headers -> 431
    "max_headers": 100,              # header fields -> 431
    "keepalive_timeout": 5.0,        # idle keep-alive connection, seconds
    "request_timeout": 30.0,         # a started request must arrive within this
}
_SPOOL_BYTES = 1024 * 1024
_NO_BODY_STATUSES = (204, 304)

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}


class _Reject(Exception):
    """A request we answer with an error status and then close."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class _Request:
    __slots__ = ("url", "headers", "header_bytes", "method", "version", "keep_alive", "body",
                 "expect_continue", "headers_done")

    def __init__(self):
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.method = self.version = None
        self.keep_alive = False
        self.body = None
        self.expect_continue = False
        self.headers_done = False


class _Connection:
    """One client connection: its socket, its parser and the requests parsed so far."""

    def __init__(self, sock, peer, limits):
        self.sock = sock
        self.peer = peer if isinstance(peer, tuple) else ("", 0)
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.current = None
        self.complete = collections.deque()
        self.continue_sent = False
        self.idle_since = time.monotonic()

    # -- httptools callbacks -----------------------------------------------------
    def on_message_begin(self):
        self.current = _Request()
        self.continue_sent = False

    def on_url(self, url):
        self._count(len(url))
        self.current.url += url

    def on_header(self, name, value):
        request = self.current
        self._count(len(name) + len(value))
        if len(request.headers) >= self.limits["max_headers"]:
            raise _Reject(431)
        request.headers.append((name, value))

    def _count(self, n):
        self.current.header_bytes += n
        if self.current.header_bytes > self.limits["max_header_bytes"]:
            raise _Reject(431)

    def on_headers_complete(self):
        request, parser = self.current, self.parser
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.headers_done = True
        for name, value in request.headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit() \
                    and int(value) > self.limits["max_body"]:
                raise _Reject(413)
            if lower == b"expect" and value.strip().lower() == b"100-continue":
                request.expect_continue = True

    def on_body(self, data):
        request = self.current
        if request.body is None:
            request.body = tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
        if request.body.tell() + len(data) > self.limits["max_body"]:
            raise _Reject(413)
        request.body.write(data)

    def on_message_complete(self):
        self.complete.append(self.current)
        self.current = None

    # -- reading -----------------------------------------------------------------
    def next_request(self):
        """The next complete request, or None when the client closed or went quiet."""
        self.sock.settimeout(self.limits["request_timeout"])
        while not self.complete:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionError):
                return None
            if not data:
                return None
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                cause = e.__context__
                raise cause if isinstance(cause, _Reject) else _Reject(400) from None
            except httptools.HttpParserUpgrade:
                # No protocol switch in WSGI: answer the request as plain HTTP, then close.
                if self.current is not None and self.current.headers_done:
                    self.current.keep_alive = False
                    self.on_message_complete()
            except httptools.HttpParserError:
                raise _Reject(400) from None
            request = self.current
            if request is not None and request.expect_continue and not self.continue_sent:
                self.continue_sent = True
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        return self.complete.popleft()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class _Date:
    """The Date header, formatted once per second."""

    def __init__(self):
        self.second = 0
        self.value = b""

    def header(self):
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


class WSGIServer:
    def __init__(self, app, listeners, settings, hooks):
        self.app = app
        self.listeners = list(listeners)
        self.limits = {**LIMITS, "keepalive_timeout": settings.keep_alive}
        self.threads = settings.threads or DEFAULT_THREADS
        self.access_log = settings.access_log
        self.slot = hooks.slot
        self.stopping = False
        self.inflight = 0
        self.finished = 0  # requests handled (progress, for the heartbeat)
        self.heartbeat = hooks.heartbeat
        self.lock = threading.Lock()
        self.returned = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.date = _Date()
        first = listeners[0].address if listeners else ("", 0)
        if isinstance(first, tuple):
            self.server_name, self.server_port = str(first[0]), str(first[1])
        else:
            self.server_name, self.server_port = "localhost", "0"

    def stop(self):
        """Stop accepting; connections finish their current request. Any thread."""
        self.stopping = True
        self._wake()

    def _wake(self):
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    # -- the acceptor (main thread) ---------------------------------------------
    def serve(self):
        pool = _Pool(self)
        sel = selectors.DefaultSelector()
        idle = {}
        sel.register(self.wake_r, selectors.EVENT_READ, None)
        for listener in self.listeners:
            sel.register(listener.fileno(), selectors.EVENT_READ, listener)

        def start(conn):
            with self.lock:
                self.inflight += 1
                busy = self.inflight
            pool.submit(conn, busy)

        beat = _Progress(self)
        try:
            while True:
                beat()
                for key, _ in sel.select(timeout=1.0):
                    data = key.data
                    if data is None:
                        self._drain_wake()
                    elif isinstance(data, _Connection):
                        sel.unregister(key.fd)
                        idle.pop(data, None)
                        start(data)
                    elif not self.stopping:
                        for conn in self._accept_all(data):
                            start(conn)
                while True:
                    try:
                        conn = self.returned.get_nowait()
                    except queue.Empty:
                        break
                    if self.stopping:
                        conn.close()
                        continue
                    stale = sel.get_map().get(conn.sock.fileno())
                    if stale is not None:  # a closed listener's number, reused
                        sel.unregister(conn.sock.fileno())
                    conn.idle_since = time.monotonic()
                    idle[conn] = True
                    sel.register(conn.sock, selectors.EVENT_READ, conn)
                if self.stopping:
                    self._close_listeners(sel)
                    for conn in list(idle):
                        sel.unregister(conn.sock)
                        conn.close()
                    idle.clear()
                    with self.lock:
                        if self.inflight == 0:
                            break
                    continue
                deadline = time.monotonic() - self.limits["keepalive_timeout"]
                for conn in [c for c in idle if c.idle_since < deadline]:
                    del idle[conn]
                    sel.unregister(conn.sock)
                    conn.close()
        finally:
            pool.shutdown()
            sel.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
        return 0

    def _accept_all(self, listener):
        conns = []
        while len(conns) < 64:
            try:
                sock, peer = listener.accept(timeout=0)  # blocking sockets, as socket.accept()
            except (TimeoutError, BlockingIOError, InterruptedError, ValueError, OSError):
                break
            conns.append(_Connection(sock, peer, self.limits))
        return conns

    def _close_listeners(self, sel):
        for listener in self.listeners:
            try:
                sel.unregister(listener.fileno())
            except (KeyError, ValueError, OSError):
                pass
            listener.close()
        self.listeners = []

    def _drain_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- a pool thread: one request (or a pipelined batch) --------------------------
    def _handle(self, conn):
        keep = False
        try:
            while True:
                try:
                    request = conn.next_request()
                except _Reject as e:
                    self._send_error(conn, e.status)
                    break
                if request is None:
                    break
                keep = self._respond(conn, request) and not self.stopping
                if not keep or not conn.complete:
                    break
        except OSError:
            keep = False
        except Exception:  # noqa: BLE001 - a server bug must not kill the worker
            traceback.print_exc()
            keep = False
        finally:
            with self.lock:
                self.inflight -= 1
                self.finished += 1
            if keep:
                self.returned.put(conn)
            else:
                conn.close()
            if keep or self.stopping:
                self._wake()

    def _send_error(self, conn, status):
        body = _REASONS[status]
        try:
            conn.sock.sendall(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                              b"connection: close\r\n%s\r\n%s"
                              % (status, body, len(body), self.date.header(), body))
        except OSError:
            pass

    def environ(self, conn, request):
        path, _, query = request.url.partition(b"?")
        path = path.partition(b"#")[0]
        if path.startswith(b"http://") or path.startswith(b"https://"):  # absolute-form
            path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
        body = request.body
        length = 0
        if body is not None:
            length = body.tell()
            body.seek(0)
        else:
            body = _EMPTY_INPUT
        environ = {
            "REQUEST_METHOD": request.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": f"HTTP/{request.version}",
            "REMOTE_ADDR": str(conn.peer[0]),
            "REMOTE_PORT": str(conn.peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        for name, value in request.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            value = value.decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                environ[key] = value
                continue
            if key == "TRANSFER_ENCODING" or key == "EXPECT":
                continue  # already acted on: the body is whole, the 100 was sent
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + value if key in environ else value
        if body is not _EMPTY_INPUT or "CONTENT_LENGTH" in environ:
            environ["CONTENT_LENGTH"] = str(length)
        return environ

    def _respond(self, conn, request):
        """Run the app for one request; True if the connection can be kept open."""
        environ = self.environ(conn, request)
        response = _Response(conn, request, self)
        slot = self.slot
        if slot is not None:
            slot.request_started()
        try:
            result = self.app(environ, response.start_response)
            try:
                if isinstance(result, (list, tuple)) and len(result) == 1:
                    response.whole(result[0])
                else:
                    for chunk in result:
                        if chunk:
                            response.write(chunk)
                    response.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except OSError:
            return False
        except Exception:  # noqa: BLE001 - the app's error: log it, answer 500
            traceback.print_exc()
            if not response.headers_sent:
                self._send_error(conn, 500)
            return False
        finally:
            if slot is not None:
                slot.request_finished()
            if request.body is not None:
                request.body.close()
        if self.access_log:
            print(f'{environ["REMOTE_ADDR"]} - "{environ["REQUEST_METHOD"]} {environ["PATH_INFO"]} '
                  f'{environ["SERVER_PROTOCOL"]}" {response.status_code}', flush=True)
        return response.keep_alive


class _Pool:
    """The request threads, started only as concurrency needs them: a new one when more
    connections are in flight than threads exist. ThreadPoolExecutor starts one whenever
    no thread is idle at that instant, so a sequential client racing a thread's return
    to the pool grew it anyway; each thread costs a stack, a thread state and a malloc
    arena of private pages."""

    def __init__(self, server):
        self.server = server
        self.jobs = queue.SimpleQueue()
        self.workers = []

    def submit(self, conn, busy):
        """busy: connections in flight, this one included."""
        self.jobs.put(conn)
        if busy > len(self.workers) and len(self.workers) < self.server.threads:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name=f"pyclusterc-wsgi_{len(self.workers)}")
            self.workers.append(thread)
            thread.start()

    def _run(self):
        handle = self.server._handle
        while (conn := self.jobs.get()) is not None:
            try:
                handle(conn)
            except BaseException:  # noqa: BLE001 - e.g. the app's sys.exit(): serve on
                traceback.print_exc()

    def shutdown(self):
        """Wait for the threads to finish what was submitted."""
        for _ in self.workers:
            self.jobs.put(None)
        for thread in self.workers:
            thread.join()


class _Progress:
    """Stamps the heartbeat at most twice a second, and only while the worker makes
    progress: a free thread in the pool, or a request finished since the last stamp.
    A worker whose every thread is stuck in the app stops stamping (--timeout)."""

    def __init__(self, server):
        self.server = server
        self.last = 0.0
        self.finished = -1

    def __call__(self):
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        server = self.server
        if server.inflight < server.threads or server.finished != self.finished:
            self.last, self.finished = now, server.finished
            server.heartbeat()


class _EmptyInput:
    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def __iter__(self):
        return iter(())


_EMPTY_INPUT = _EmptyInput()


class _Response:
    """start_response, the write callable and the framing of one response."""

    def __init__(self, conn, request, server):
        self.conn = conn
        self.request = request
        self.server = server
        self.status = None
        self.status_code = 0
        self.headers = None
        self.headers_sent = False
        self.chunked = False
        self.keep_alive = request.keep_alive and not server.stopping
        self.no_body = request.method == b"HEAD"

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        self.status = status
        self.status_code = int(status[:3])
        self.headers = headers
        return self.write

    def _head(self, body_length):
        """The status line and headers; body_length None = not known in advance."""
        if self.status is None:
            raise AssertionError("the WSGI app returned without calling start_response()")
        lines = [b"HTTP/1.1 ", self.status.encode("latin-1"), b"\r\n"]
        has_length = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                has_length = True
            elif lower == "connection":
                if value.lower() == "close":
                    self.keep_alive = False
                continue
            elif lower == "transfer-encoding":
                continue  # we frame the body ourselves
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        bodiless = self.status_code < 200 or self.status_code in _NO_BODY_STATUSES
        if not has_length and not bodiless:
            if body_length is not None:
                lines.append(b"content-length: %d\r\n" % body_length)
            elif self.request.version == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the close ends it
        if bodiless or self.no_body:
            self.chunked = False
        lines.append(self.server.date.header())
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        elif self.request.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.headers_sent = True
        return b"".join(lines)

    def whole(self, body):
        """A response whose whole body is known: one send, with a Content-Length."""
        head = self._head(len(body))
        self.conn.sock.sendall(head if self.no_body else head + body)

    def write(self, data):
        out = b"" if self.headers_sent else self._head(None)
        if data and not self.no_body:
            out += (b"%x\r\n%s\r\n" % (len(data), data)) if self.chunked else data
        if out:
            self.conn.sock.sendall(out)

    def finish(self):
        if not self.headers_sent:
            self.conn.sock.sendall(self._head(0))
        elif self.chunked:
            self.conn.sock.sendall(b"0\r\n\r\n")


def run(app, listeners, settings, hooks):
    """Serve until hooks.on_stop fires and in-flight requests are done; returns 0.
    The app was imported before this is called, so the worker is ready at once."""
    server = WSGIServer(app, listeners, settings, hooks)
    hooks.on_stop(server.stop)
    hooks.ready()
    return server.serve()
