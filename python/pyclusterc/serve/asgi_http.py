"""uvicorn's httptools protocol with pyclusterc's request reading (``serve.http1``).

uvicorn's ``HttpToolsProtocol`` keeps running the ASGI side: its
``RequestResponseCycle`` (receive/send, flow control, 100-continue, pipelining), its
keep-alive timer, its websocket hand-over. What changes is how a request gets in, so
that both servers read requests the same way:

- heads are framed and limited by ``http1.RequestReader`` (431/414/413 as bytes
  arrive, a whole-head deadline ``--header-timeout``), parsed once whole: trailers never
  reach ``scope["headers"]`` (uvicorn appends them to the list the app already holds),
  values are trimmed, a second Host is refused, underscore names are dropped, methods
  llhttp does not know are served;
- HTTP/1.0 keep-alive is kept, and said (uvicorn closes every HTTP/1.0 connection);
- a Date or Server the app sets replaces ours instead of doubling it;
- refusals and closes after a response let the client read what we sent (lingering
  close) instead of resetting it with unread bytes;
- draining (``shutdown``): an idle connection goes back to the primary
  (``hand_back``), or waits a short grace for a request in flight.
"""
import asyncio
import collections
import time
import urllib.parse

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import (HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol,
                                                   RequestResponseCycle)

from . import http1
from .responses import AccessLog, add_request, clock_needed, error_response, unread_bytes

_monotonic = time.monotonic  # once per request with metrics on: one global lookup

_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20


class Serving:
    """What every connection of one event loop shares: the limits, the apps, the hooks
    and the state of the drain."""

    def __init__(self, settings, hand_back, date, metrics_slot=None):
        self.limits = http1.Limits.from_settings(settings)
        self.head_parser = http1.HeadParser()  # one per loop: heads parse whole, at once
        self.header_timeout = settings.header_timeout or None
        self.keep_alive = settings.keep_alive
        self.drain_grace = min(settings.keep_alive, max(0.1, (settings.kill_timeout or 1.0) / 2))
        self.hand_back = hand_back
        self.date = date
        self.limit_concurrency = settings.limit_concurrency
        self.in_progress = lambda: 0  # requests running in the whole worker
        # With --limit-concurrency: this loop's ASGI tasks whose response is complete but
        # which have not ended yet (their done callback runs after the loop's next poll,
        # where the client's next request may already be read). Not counted as running.
        self.answered_tasks = 0
        self.extra_headers = b""
        self.draining = False
        # (status, started) per response into the scoreboard (metrics on), or None.
        self.record = metrics_slot.record_since if metrics_slot is not None else None
        self.access = AccessLog.from_settings(settings)  # the access log, or None
        self.clocked = clock_needed(self.access, self.record)
        # The default access line: its buffer (AccessLog.lines), None when the log is off
        # or has a format (AccessLog.asgi); add_request writes the line and, with metrics
        # on, records the response too: one call for both.
        self.access_lines = self.access.lines if self.access is not None and self.access.default_line else None
        self.add_request = add_request
        if self.access_lines is not None and metrics_slot is not None:
            self.access.record_into(metrics_slot.pointer)
        # With either on, each cycle gets this Serving as its `timing` at the head (one
        # store; Python 3.11 reads a class attribute through an instance several times
        # slower than an instance's own).
        self.timed = self.access is not None or self.record is not None
        self.app = None          # the app for a request without X-Forwarded-* fields
        self.proxied_app = None  # the same behind uvicorn's ProxyHeadersMiddleware
        # Connections with a deadline (a head to complete, an idle keep-alive wait): one
        # sweep per loop checks them, rather than a timer made and cancelled per request.
        self.deadlines = set()
        self.uvicorn_state = None  # Protocol: what uvicorn's __init__ sets, once known
        self._defaults_of = None
        self._defaults = None

    def sweep(self, now):
        """Called four times a second on the loop: connections past their deadline."""
        late = [conn for conn in self.deadlines if conn.deadline <= now]
        for conn in late:
            conn.deadline_passed()

    def answered_task_ended(self, _task):
        self.answered_tasks -= 1

    def defaults(self, server_headers):
        """uvicorn's default headers (date, ours, --header), as one block of bytes."""
        if server_headers is not self._defaults_of:
            self._defaults_of, self._defaults = server_headers, _DefaultHeaders(server_headers)
        return self._defaults


def request_apps(loaded_app, wrap=None):
    """(direct, proxied) from uvicorn's loaded app, ProxyHeadersMiddleware outermost
    when proxy headers are on: a request without X-Forwarded-For/-Proto skips the
    middleware, which would change nothing for it. wrap: applied to both."""
    direct = loaded_app.app if isinstance(loaded_app, ProxyHeadersMiddleware) else loaded_app
    if wrap is None:
        return direct, loaded_app
    return wrap(direct), wrap(loaded_app)


class _DefaultHeaders:
    """The default header lines, joined once a second (uvicorn renews the Date pair each
    second). A default the app sets itself (Date from Flask's send_file, its own Server)
    is left out, so the response has one."""

    def __init__(self, pairs):
        self.pairs = pairs
        self.names = frozenset(name for name, _ in pairs)
        self.block = self.without(())

    def without(self, names):
        return b"".join(b"%s: %s\r\n" % pair for pair in self.pairs if pair[0] not in names)


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle; ``send`` is uvicorn's, written for fewer steps
    per response (the defaults as one block, no list copies), and it also says
    ``connection: keep-alive`` to an HTTP/1.0 client whose connection stays open
    (uvicorn closes every HTTP/1.0 connection)."""

    http10_keep_alive = False
    # With the access log or metrics on: timing, the loop's Serving (its record, access
    # and access_lines); started, time.monotonic() at the head (0.0 when no duration
    # is used); with the default access line, the connection's log_prefix and the head
    # as sent (Head.raw).
    timing = None
    started = 0.0
    log_prefix = b""
    log_head = None
    status_code = 0
    sent = 0

    async def send(self, message):
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            self.status_code = status = message["status"]
            scope = self.scope
            defaults = self.default_headers
            content = [STATUS_LINE[status], defaults.block]
            overridden = None
            connection_close = False
            for name, value in message.get("headers", ()):
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    if b"close" in [token.lower().strip() for token in value.split(b",")]:
                        self.keep_alive = False
                        connection_close = True
                elif name in defaults.names:
                    overridden = (overridden or set()) | {name}
                content += (name, b": ", value, b"\r\n")
            if overridden:
                content[1] = defaults.without(overridden)
            if not self.keep_alive:
                if not connection_close:
                    content.append(b"connection: close\r\n")
            elif self.http10_keep_alive:
                content.append(b"connection: keep-alive\r\n")
            if self.chunked_encoding is None and scope["method"] != "HEAD" and status not in (204, 304):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            self.transport.write(b"".join(content))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                if body:
                    content = [b"%x\r\n" % len(body), body, b"\r\n"]
                else:
                    content = []
                if not more_body:
                    content.append(b"0\r\n\r\n")
                self.transport.write(b"".join(content))
            else:
                if len(body) > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= len(body)
                self.transport.write(body)
            self.sent += len(body)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                serving = self.timing
                if serving is not None:
                    lines = serving.access_lines
                    if lines is not None:  # the default line, and the record (AccessLog's docstring)
                        # A local: 3.11 does not specialise obj.attr() where attr is the instance's own.
                        add = serving.add_request
                        if add(lines, self.log_prefix, self.log_head, self.status_code, self.started):
                            serving.access.flush()
                    else:
                        record = serving.record
                        if record is not None:
                            record(self.status_code, self.started)
                        access = serving.access
                        if access is not None:
                            access.asgi(self.scope, self.status_code, self.sent, self.started)
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")


class _LingeringTransport:
    """The transport a closing cycle gets: ``close()`` lingers (see Protocol._linger)."""

    def __init__(self, transport, protocol):
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def close(self):
        if self._protocol is not None:
            self._protocol.close_lingering()
        else:
            self._transport.close()

    def release(self):
        """The connection is gone: drop the protocol (no cycle left for the GC)."""
        self._protocol = None


# What uvicorn's __init__ sets that every connection of a loop may share: the config,
# the loggers, the loop, the server state. Anything else that holds state of its own
# (a new uvicorn's attribute we do not know) makes every connection run that __init__.
_SHARED_STATE = frozenset(("config", "app", "server_state", "connections", "tasks", "app_state",
                           "logger", "access_logger"))
_PER_CONNECTION = frozenset(("pipeline", "parser", "loop"))
_CONTAINERS = (list, dict, set, bytearray, collections.deque)


def _uvicorn_state(instance):
    """The attributes uvicorn's __init__ gave ``instance``, to copy into the next
    connections of its loop; None if one of them is state we cannot share."""
    state = {}
    for name, value in vars(instance).items():
        if name in _PER_CONNECTION:
            continue
        if isinstance(value, _CONTAINERS) and name not in _SHARED_STATE:
            return None
        state[name] = value
    return state


class Protocol(HttpToolsProtocol):
    log_prefix = None  # with the default access line: AccessLog.client_prefix

    def __init__(self, config, server_state, app_state, serving, _loop=None):
        # uvicorn's __init__ looks up two loggers and builds an httptools parser we do
        # not use, for every connection: its result is copied instead, once known.
        state = serving.uvicorn_state
        if not state:  # not known yet (None), or not to be shared (False)
            super().__init__(config, server_state, app_state, _loop)
            if serving.uvicorn_state is None:
                serving.uvicorn_state = _uvicorn_state(self) or False
        else:
            self.__dict__.update(state)
            self.loop = _loop or asyncio.get_event_loop()
            self.pipeline = collections.deque()
        self.parser = None  # ours reads requests (serve.http1)
        self.serving = serving
        self.reader = http1.RequestReader(self, serving.limits, serving.head_parser)
        # The loop time by which a head must be complete (--header-timeout) or, while
        # idle between requests, the next one must start (--keep-alive); swept by Serving.
        self.deadline = None
        self.waiting_idle = False
        self.app = serving.app
        self.lingering = False
        self.lingered = 0
        self.tls = False
        self.close_after = False   # draining and not handed back: the next response closes
        self.asgi_info = {"version": self.asgi_version, "spec_version": "2.3"}

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport):
        super().connection_made(transport)
        self.tls = self.scheme == "https"
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None and not self.tls else None
        self._set_deadline(self.serving.header_timeout)
        if self.serving.access_lines is not None:
            client = self.client
            self.log_prefix = AccessLog.client_prefix(client[0] if client else None)
        if self.serving.draining:
            self.shutdown()

    def connection_lost(self, exc):
        self._clear_deadline()
        super().connection_lost(exc)
        # Break the connection's reference cycles (reader -> protocol, lingering
        # transport -> protocol) as uvicorn does for its parser: freed at once, instead
        # of ~27 objects per connection left to the cyclic GC.
        self.reader.release()
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, _LingeringTransport):
            cycle.transport.release()
        self.pipeline.clear()  # requests queued behind one in progress: no one to answer

    def eof_received(self):
        if self.lingering:
            self.transport.close()

    def data_received(self, data):
        if self.lingering:
            self.lingered += len(data)
            if self.lingered > _LINGER_BYTES:
                self.transport.close()
            return
        reader = self.reader
        try:
            reader.feed(data)
        except http1.HTTPError as e:
            self._refuse(e.status)
            return
        if reader.head_pending:
            if not reader.idle and (self.deadline is None or self.waiting_idle):
                self._set_deadline(self.serving.header_timeout)  # a head is arriving
        elif self.deadline is not None:
            self._clear_deadline()  # in a body: the app reads it at its pace

    def _set_deadline(self, seconds, idle=False):
        if seconds:
            self.deadline = self.loop.time() + seconds
            self.waiting_idle = idle
            self.serving.deadlines.add(self)
        elif self.deadline is not None:
            self._clear_deadline()

    def _clear_deadline(self):
        self.deadline = None
        self.serving.deadlines.discard(self)

    def deadline_passed(self):
        self._clear_deadline()
        if self.transport.is_closing() or not self.reader.head_pending:
            return
        if self.reader.idle:
            if (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
                self.transport.close()  # sent nothing (more): no one to answer
        else:
            self._refuse(408)

    def _refuse(self, status):
        """Answer a request we will not serve, then close."""
        if self.deadline is not None:
            self._clear_deadline()
        self.transport.write(error_response(status, self.serving.date.header(), self.serving.extra_headers))
        self._linger()

    def close_lingering(self):
        """A cycle ends the connection after its response."""
        head = self.reader.head
        # A client that said it closes sends nothing more: what it sent is in the buffer.
        if self.reader.buffer or (not (head is not None and head.client_closes) and self._bytes_waiting()):
            self._linger()
        else:
            self.transport.close()

    def _linger(self):
        """Half-close and discard what the client still sends, so that it reads our
        response instead of a reset (unread bytes at close make the kernel send RST)."""
        if self.lingering or self.transport.is_closing():
            return
        self.lingering = True
        self.flow.resume_reading()
        if self.tls or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _bytes_waiting(self):
        return self.fd is not None and unread_bytes(self.fd) > 0

    # -- the reader's callbacks ----------------------------------------------------
    def on_head(self, head):
        if self.deadline is not None:
            self._clear_deadline()
        serving = self.serving
        headers = head.headers
        self.url = head.target
        self.headers = headers
        root = self.root_path
        raw_path = head.path
        if raw_path == b"/":
            path = "/"
        elif raw_path[:1] == b"/":
            if raw_path.find(b"%") >= 0 or not raw_path.isascii():
                path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8", "replace")
            else:
                path = raw_path.decode("ascii")
        else:
            path = raw_path.decode("latin-1")  # "*" (OPTIONS), "" (CONNECT)
        if root and not (path == root or path.startswith(root + "/")):
            # uvicorn's rule: root_path is the mount point a proxy stripped. A proxy that
            # did not strip it sends the full path: do not double the prefix.
            path = root + path
            raw_path = root.encode("latin-1") + raw_path
        self.scope = scope = {
            "type": "http",
            "asgi": self.asgi_info,
            "http_version": head.version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": head.method,
            "root_path": root,
            "path": path,
            "raw_path": raw_path,
            "query_string": head.query,
            "headers": headers,
            "state": self.app_state.copy(),
        }
        if head.upgrade and self._should_upgrade():
            self.handle_websocket_upgrade()
            return True  # the websocket protocol has the transport now
        self.expect_100_continue = expect = head.expect_continue
        limit = serving.limit_concurrency
        existing = self.cycle
        pipelined = existing is not None and not existing.response_complete
        # Requests in progress in the worker, as the WSGI server counts (uvicorn counts
        # per loop, and open connections too, idle keep-alive ones included). A pipelined
        # request runs only once the one before it is answered: it adds no concurrency.
        if limit is not None and not pipelined and serving.in_progress() >= limit:
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = serving.proxied_app if head.forwarded else self.app
        keep_alive = head.keep_alive and not self.close_after and not (serving.draining and self.tls)
        transport = self.transport if keep_alive else _LingeringTransport(self.transport, self)
        self.cycle = cycle = _Cycle(
            scope, transport, self.flow, self.logger, self.access_logger, self.access_log,
            serving.defaults(self.server_state.default_headers), asyncio.Event(), expect,
            keep_alive, self.on_response_complete)
        if keep_alive and head.version == "1.0":
            cycle.http10_keep_alive = True
        if serving.timed:
            cycle.timing = serving
            # Stored either way: the class's default read through the instance is slower.
            cycle.started = _monotonic() if serving.clocked else 0.0
            if serving.access_lines is not None:
                cycle.log_prefix = self.log_prefix
                cycle.log_head = head.raw
        if not pipelined:
            self._start_asgi_task(cycle, app)
        else:
            self.flow.pause_reading()  # pipelined: served once the one before is done
            self.pipeline.appendleft((cycle, app))
        return False

    def on_body(self, body):
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_end(self):
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self):
        # uvicorn's, with the idle wait on the sweep instead of a timer per request.
        self.server_state.total_requests += 1
        serving = self.serving
        if serving.limit_concurrency is not None:
            task = asyncio.current_task()
            if task is not None and task in self.tasks:
                serving.answered_tasks += 1
                task.add_done_callback(serving.answered_task_ended)
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.reader.idle:
            self._set_deadline(self.serving.keep_alive, idle=True)
        if self.serving.draining:
            self.shutdown()

    # -- draining ------------------------------------------------------------------
    def shutdown(self):
        """The worker drains: close nothing that may hold a request."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # on_response_complete comes back here
        if self.pipeline or not self.reader.idle or self.lingering or self.transport.is_closing():
            return  # a request is arriving or queued: it is served, then we come back
        if not self.tls and not self.close_after:
            sock = self.transport.get_extra_info("socket")
            try:
                handed = sock is not None and self.serving.hand_back(sock)
            except Exception:  # noqa: BLE001 - the channel is gone: fall back to the grace
                handed = False
            if handed:
                self.transport.abort()  # our fd only: the connection lives on in a new worker
                return
        if not self.close_after:
            self.close_after = True
            self.loop.call_later(self.serving.drain_grace, self._grace_over)

    def _grace_over(self):
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and self.reader.idle and not self.pipeline:
            self.transport.close()
