"""A threaded WSGI server for cluster workers.

    listeners ─► acceptor (the worker's main thread, one selector) ─────────────┐
                 reads every connection it holds without blocking: TLS         │
                 handshakes, request heads and bodies (serve.http1), deadlines │
                      │ a complete request                        ▲ keep-alive │
                      ▼                                           │ connection │
                 pool thread: runs the app, writes the response ──┘ comes back │
                                                                               │
    A connection holds no thread until a whole request has arrived, so clients that
    trickle bytes (slowloris) cost a buffer each, not a thread (gunicorn gthread's
    shape, with the head read moved off the pool). Bodies are read fully before the
    app runs (spooled to a temporary file past 1 MiB), so ``wsgi.input`` never blocks
    on the network and chunked uploads reach the app with a CONTENT_LENGTH.

While draining (hooks.on_stop), no connection that may hold a request is closed: a
request in progress is answered, an idle keep-alive connection goes back to the primary
(hooks.hand_back) or, if it cannot, waits a short grace for a request in flight, which
is answered with ``Connection: close``.
"""
import os
import queue
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
import traceback

from . import http1
from .options import ssl_context, with_defaults
from .._lowlevel.wakeup import WakeupPipe
from .responses import AccessLog, Date, add_request, clock_needed, error_response, server_headers, unread_bytes
from .wsgi_app import Response, build_environ
from .wsgi_threads import Progress, RequestThreads

DEFAULT_THREADS = 8
_SPOOL_BYTES = 1024 * 1024
_BODY_IDLE_SECONDS = 30.0   # a body that stops arriving this long: 408
_SEND_TIMEOUT = 30.0        # a client that does not read its response this long: closed
_SWEEP_SECONDS = 0.2        # how often deadlines are checked
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20
_WAKE = object()
_READ = 65536


class _Request:
    __slots__ = ("head", "body", "keep_alive")

    def __init__(self, head):
        self.head = head
        self.body = None
        self.keep_alive = head.keep_alive


class _Connection:
    """One client connection: its socket, its reader and the requests read so far.
    Owned by one thread at a time: the acceptor while reading, a pool thread while a
    request runs (handed over through queues)."""
    log_prefix = None  # with the default access line: AccessLog.client_prefix, once made

    def __init__(self, sock, peer, limits, now, deadline, tls=False, head_parser=None):
        self.sock = sock
        self.fd = sock.fileno()
        self.registered = False     # with the acceptor's epoll (one-shot)
        self.peer = peer if isinstance(peer, tuple) else ("", 0)
        self.reader = http1.RequestReader(self, limits, head_parser)
        self.current = None
        self.complete = []
        self.continue_due = False
        self.deadline = deadline
        self.tls = tls
        self.handshaking = tls
        self.close_after = False    # draining and not handed back: answer, then close
        self.error = None           # a status to answer once the requests before it are
        self.linger = False         # closing: discard what the client still sends first
        self.lingered = 0
        self.closed = False
        self.answered = False       # its last response is on its way (WSGIServer.answered)

    # -- reader callbacks ---------------------------------------------------------
    def on_head(self, head):
        self.current = _Request(head)
        if head.upgrade:  # no protocol switch in WSGI: answer as plain HTTP, then close
            self.current.keep_alive = False
        self.continue_due = head.expect_continue and (head.chunked or bool(head.content_length))
        return False

    def on_body(self, data):
        request = self.current
        if request.body is None:
            request.body = tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
        request.body.write(data)

    def on_end(self):
        self.continue_due = False
        self.complete.append(self.current)
        self.current = None

    # -- socket -----------------------------------------------------------------
    def read(self):
        """What arrived, b"" at EOF, None when nothing is there yet (never blocks)."""
        if not self.tls:
            try:
                return self.sock.recv(_READ, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return b""  # reset by the client (wrk does at its end), or gone: as EOF
        try:
            data = self.sock.recv(_READ)
            while self.sock.pending():
                data += self.sock.recv(_READ)
            return data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError:  # ssl.SSLError included
            return b""

    def for_pool(self):
        if self.tls:
            self.sock.settimeout(_SEND_TIMEOUT)

    def for_acceptor(self):
        if self.tls:
            self.sock.settimeout(0)

    def send_now(self, data):
        """A short write from the acceptor (100 Continue, an error): never blocks."""
        try:
            if self.tls:
                self.sock.send(data)
            else:
                self.sock.send(data, socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            pass

    def wants_linger(self):
        """Closing now could reset the connection (unread bytes make the kernel send RST,
        and the client may lose the response): unparsed bytes, or more already here."""
        if self.tls:
            return False
        if self.reader.buffer or self.error is not None:
            return True
        # A client that said it closes sends nothing more (what it sent with the request
        # is in the buffer): no FIONREAD for it, one syscall less per such connection.
        head = self.reader.head
        return not (head is not None and head.client_closes) and unread_bytes(self.fd) > 0

    def close(self):
        if not self.closed:
            self.closed = True
            self.reader.release()
            try:
                self.sock.close()
            except OSError:
                pass


class WSGIServer:
    def __init__(self, app, listeners, settings, hooks):
        self.app = app
        self.listeners = list(listeners)
        self.limits = http1.Limits.from_settings(settings)
        self.head_parser = http1.HeadParser()  # the acceptor parses every head
        self.keep_alive = settings.keep_alive
        self.header_timeout = settings.header_timeout or 86400.0
        self.limit_concurrency = settings.limit_concurrency
        self.threads = settings.threads or DEFAULT_THREADS
        self.root_path = settings.root_path.encode("latin-1")
        self.access_log = AccessLog.from_settings(settings)
        # The default access line's buffer (AccessLog.lines), None when the log is off or
        # has a format (AccessLog.wsgi): one add_request per response.
        self.access_lines = self.access_log.lines if self.access_log is not None and self.access_log.default_line \
            else None
        self.add_request = add_request
        self.extra_headers = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value
                                      in server_headers(settings))
        self.ssl = ssl_context(settings)
        self.scheme = "https" if self.ssl else "http"
        self.drain_grace = min(settings.keep_alive, max(0.1, (settings.kill_timeout or 1.0) / 2))
        self.hand_back = hooks.hand_back
        self.slot = hooks.slot
        metrics_slot = getattr(hooks, "metrics_slot", None)
        # (status, started) per response into the scoreboard, for metrics; or None.
        self.record = metrics_slot.record_since if metrics_slot is not None else None
        self.clocked = clock_needed(self.access_log, self.record)
        # Metrics into this worker's own slot (the run worker's hooks): a request's two
        # counts, its clock and its record in one C call at each end, not four calls.
        self.slot_records = self.slot is not None and metrics_slot is self.slot
        self.stopping = False
        self.inflight = 0
        # With --limit-concurrency: connections in flight whose last response is on its
        # way (answered() ran): not counted against the limit, so a client that has its
        # response and asks again (or sends the next request on its keep-alive
        # connection) never meets a 503 from its own finished request.
        self.answering = 0
        self.finished = 0  # requests handled (progress, for the heartbeat)
        self.heartbeat = hooks.heartbeat
        self.lock = threading.Lock()
        self.returned = queue.SimpleQueue()
        self.wakeup = WakeupPipe()
        self.date = Date()
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
        self.wakeup.wake()

    # -- the acceptor (main thread) ---------------------------------------------
    def serve(self):
        self.pool = RequestThreads(self)
        # Connections are registered one-shot: an event disarms the fd until we re-arm it
        # (one epoll_ctl per request; none while a pool thread has the connection).
        self.ep = ep = select.epoll()
        self.fds = fds = {}  # fd -> _Connection, listener, or _WAKE
        self.held = set()    # connections the acceptor reads
        ep.register(self.wakeup.fileno(), select.EPOLLIN)
        fds[self.wakeup.fileno()] = _WAKE
        for listener in self.listeners:
            ep.register(listener.fileno(), select.EPOLLIN)
            fds[listener.fileno()] = listener
        beat = Progress(self)
        next_sweep = 0.0
        drained = False
        try:
            while True:
                beat()
                for fd, _ in ep.poll(_SWEEP_SECONDS):
                    data = fds.get(fd)
                    if data is _WAKE:
                        self.wakeup.drain()
                    elif isinstance(data, _Connection):
                        try:
                            self._readable(data)
                        except Exception:  # noqa: BLE001 - one connection's fault ends it, not the worker
                            traceback.print_exc()
                            self._drop(data)
                    elif data is not None and not self.stopping:
                        self._accept_all(data)
                while True:
                    try:
                        conn = self.returned.get_nowait()
                    except queue.Empty:
                        break
                    if conn.linger:
                        self._linger(conn)
                    else:
                        self._hold(conn, time.monotonic() + self.keep_alive)
                if self.stopping and not drained:
                    drained = True
                    self._close_listeners()
                    for conn in list(self.held):
                        self._drain(conn)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_SECONDS
                    self._sweep(now)
                    if self.access_log is not None:
                        self.access_log.flush()
                if self.stopping and not self.held and self.returned.empty():
                    with self.lock:
                        if self.inflight == 0 and self.returned.empty():
                            break
        finally:
            self.pool.shutdown()
            if self.access_log is not None:
                self.access_log.flush()  # the last requests' lines
            for conn in list(self.held):
                conn.close()
            ep.close()
            self.wakeup.close()
        return 0

    def _accept_all(self, listener):
        now = time.monotonic()
        for _ in range(64):
            try:
                sock, peer = listener.accept(timeout=0)  # blocking sockets, as socket.accept()
            except (TimeoutError, BlockingIOError, InterruptedError, ValueError, OSError):
                return
            try:
                # A client that stops reading its response fails the send, not the thread.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                struct.pack("ll", int(_SEND_TIMEOUT), 0))
                if self.ssl is not None:
                    sock = self.ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    sock.settimeout(0)
            except (OSError, ValueError):
                sock.close()
                continue
            conn = _Connection(sock, peer, self.limits, now, now + self.header_timeout,
                               tls=self.ssl is not None, head_parser=self.head_parser)
            if conn.handshaking:
                self._hold(conn, conn.deadline)
                self._handshake(conn)
            else:
                # The request has usually arrived with the connection: read it now rather
                # than after an epoll registration and a wake (its _arm comes if it has not).
                self.held.add(conn)
                try:
                    self._readable(conn)
                except Exception:  # noqa: BLE001 - one connection's fault ends it, not the worker
                    traceback.print_exc()
                    self._drop(conn)

    def _hold(self, conn, deadline):
        """The acceptor reads this connection from now on."""
        if conn.closed:
            return
        conn.for_acceptor()
        conn.deadline = deadline
        self._arm(conn)
        self.held.add(conn)
        if self.stopping and not conn.linger:
            self._drain(conn)

    def _linger(self, conn):
        """Close after the client has read the response: half-close, then discard what
        it still sends (a body we refused, a request after a close) until it closes,
        for at most _LINGER_SECONDS / _LINGER_BYTES (Apache's lingering close)."""
        conn.linger = True
        conn.lingered = 0
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if conn not in self.held:
            self._hold(conn, 0.0)
        conn.deadline = time.monotonic() + _LINGER_SECONDS

    def _arm(self, conn, events=select.EPOLLIN):
        """Wake for this connection's next event (once)."""
        if conn.registered:
            self.ep.modify(conn.fd, events | select.EPOLLONESHOT)
        else:
            self.ep.register(conn.fd, events | select.EPOLLONESHOT)
            conn.registered = True
            self.fds[conn.fd] = conn

    def _release(self, conn):
        """A pool thread has it now (its fd stays registered, disarmed)."""
        self.held.discard(conn)

    def _drop(self, conn):
        self.held.discard(conn)
        if conn.registered and not conn.closed:
            # Before the close: a handed-back fd lives on elsewhere, and epoll would
            # keep reporting it.
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
            if self.fds.get(conn.fd) is conn:
                del self.fds[conn.fd]
        conn.close()

    def _handshake(self, conn):
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._arm(conn)
            return
        except ssl.SSLWantWriteError:
            self._arm(conn, select.EPOLLOUT)
            return
        except (ssl.SSLError, OSError):
            self._drop(conn)
            return
        conn.handshaking = False
        self._readable(conn)  # the client may have sent its request with the handshake

    def _readable(self, conn):
        if conn.handshaking:
            self._handshake(conn)
            return
        if conn.linger:
            data = conn.read()
            if data is not None:
                conn.lingered += len(data)
                if not data or conn.lingered > _LINGER_BYTES:
                    self._drop(conn)
                    return
            self._arm(conn)
            return
        reader = conn.reader
        was_idle = reader.idle
        data = conn.read()
        if data is None:
            self._arm(conn)
            return
        if not data:
            self._drop(conn)  # the client closed (a partial request is abandoned)
            return
        try:
            reader.feed(data)
        except http1.HTTPError as e:
            self._release(conn)
            if conn.complete:  # answer the complete requests first, then the error
                conn.error = e.status
                self._start(conn)
                return
            conn.send_now(error_response(e.status, self.date.header(), self.extra_headers))
            if conn.tls:
                self._drop(conn)
            else:
                self._linger(conn)
            return
        now = time.monotonic()
        if conn.continue_due:
            conn.continue_due = False
            conn.send_now(b"HTTP/1.1 100 Continue\r\n\r\n")
        if conn.complete:
            self._release(conn)
            self._start(conn)
            return
        if not reader.idle:
            if was_idle:
                conn.deadline = now + self.header_timeout   # the whole head, from its first byte
            elif reader.head is not None and conn.current is not None:
                conn.deadline = now + _BODY_IDLE_SECONDS    # a body: while it progresses
        self._arm(conn)

    def answered(self, conn):
        """A pool thread, before the last bytes of a response (--limit-concurrency only)."""
        if not conn.answered:
            conn.answered = True
            with self.lock:
                self.answering += 1

    def _busy_again(self, conn):
        """A pipelined request after the answered one: the connection counts again."""
        conn.answered = False
        with self.lock:
            self.answering -= 1

    def _start(self, conn):
        with self.lock:
            busy = self.inflight - self.answering
            self.inflight += 1
        if self.limit_concurrency is not None and busy >= self.limit_concurrency:
            with self.lock:
                self.inflight -= 1
            conn.send_now(error_response(503, self.date.header(), self.extra_headers))
            conn.close()
            return
        conn.for_pool()
        self.pool.submit(conn, busy + 1)

    def _drain(self, conn):
        """Stopping: an idle connection goes back to the primary; if it cannot, it waits
        drain_grace for a request already in flight (answered with Connection: close).
        A connection with a request in progress reads on."""
        if conn.handshaking or conn.linger or not conn.reader.idle or conn.close_after:
            return
        if not conn.tls:
            try:
                handed = self.hand_back(conn.sock)
            except Exception:  # noqa: BLE001 - the channel is gone: fall back to the grace
                handed = False
            if handed:
                self._drop(conn)  # our copy only: the connection lives on in a new worker
                return
        conn.close_after = True
        conn.deadline = min(conn.deadline, time.monotonic() + self.drain_grace)

    def _sweep(self, now):
        for conn in [c for c in self.held if c.deadline <= now]:
            if not conn.reader.idle and not conn.linger and not conn.handshaking:
                conn.send_now(error_response(408, self.date.header(), self.extra_headers))
            self._drop(conn)

    def _close_listeners(self):
        for listener in self.listeners:
            try:
                fd = listener.fileno()
                self.ep.unregister(fd)
                del self.fds[fd]
            except (KeyError, ValueError, OSError):
                pass
            listener.close()
        self.listeners = []

    # -- a pool thread: the requests read so far on one connection ------------------
    def handle(self, conn):
        keep = False
        try:
            while conn.complete:
                request = conn.complete.pop(0)
                keep = self._respond(conn, request)
                if not keep:
                    break
            if keep and conn.error is not None:
                self._send_error(conn, conn.error)
                keep = False
        except OSError:
            keep = False
        except Exception:  # noqa: BLE001 - a server bug must not kill the worker
            traceback.print_exc()
            keep = False
        finally:
            # Back to the acceptor before the count drops: a draining acceptor leaves
            # once nothing is in flight, and must find this connection to hand it back.
            if keep and not conn.reader.stopped:
                self.returned.put(conn)
            elif conn.wants_linger():
                conn.linger = True
                self.returned.put(conn)
                keep = True
            else:
                conn.close()
            with self.lock:
                self.inflight -= 1
                self.finished += 1
                if conn.answered:
                    conn.answered = False
                    self.answering -= 1
            if keep or self.stopping:
                self._wake()

    def _send_error(self, conn, status):
        try:
            conn.sock.sendall(error_response(status, self.date.header(), self.extra_headers))
        except (OSError, ValueError):
            pass

    def _respond(self, conn, request):
        """Run the app for one request; True if the connection can be kept open."""
        if conn.answered:
            self._busy_again(conn)
        environ = build_environ(self, conn, request)
        response = Response(conn, request, self)
        slot = self.slot
        if self.slot_records:
            started = slot.request_started_at()
        else:
            if slot is not None:
                slot.request_started()
            started = time.monotonic() if self.clocked else 0.0
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
            return False  # the client is gone
        except Exception:  # noqa: BLE001 - the app's error: log it, answer 500
            traceback.print_exc()
            if not response.headers_sent:
                self._send_error(conn, 500)
                response.status, response.status_code = "500 Internal Server Error", 500
            response.keep_alive = False
        finally:
            if self.slot_records:
                slot.request_finished_since(response.status_code, started)
            else:
                if slot is not None:
                    slot.request_finished()
                if self.record is not None:
                    self.record(response.status_code, started)
            if request.body is not None:
                request.body.close()
        lines = self.access_lines
        if lines is not None:  # the default line (AccessLog's docstring)
            prefix = conn.log_prefix
            if prefix is None:
                prefix = conn.log_prefix = AccessLog.client_prefix(conn.peer[0])
            # A local: 3.11 does not specialise obj.attr() where attr is the instance's own.
            add = self.add_request
            if add(lines, prefix, request.head.raw, response.status_code, 0.0):
                self.access_log.flush()
        elif self.access_log is not None:
            self.access_log.wsgi(environ, response.status, response.sent, started)
        return response.keep_alive


def run(app, listeners, settings, hooks):
    """Serve until hooks.on_stop fires and in-flight requests are done; returns 0.
    The app was imported before this is called, so the worker is ready at once."""
    server = WSGIServer(app, listeners, with_defaults(settings), hooks)
    hooks.on_stop(server.stop)
    hooks.ready()
    return server.serve()
