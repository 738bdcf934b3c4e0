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
import logging
import urllib.parse

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from . import http1
from .responses import AccessLog, error_response, unread_bytes

_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20


class Serving:
    """What every connection of one event loop shares: the limits, the hooks and the
    state of the drain."""

    def __init__(self, settings, hand_back, date):
        self.limits = http1.Limits.from_settings(settings)
        self.head_parser = http1.HeadParser()  # one per loop: heads parse whole, at once
        self.header_timeout = settings.header_timeout or None
        self.drain_grace = min(settings.keep_alive, max(0.1, (settings.kill_timeout or 1.0) / 2))
        self.hand_back = hand_back
        self.date = date
        self.limit_concurrency = settings.limit_concurrency
        self.in_progress = lambda: 0  # requests running in the whole worker
        self.extra_headers = b""
        self.draining = False
        # Connections whose head has a deadline: one sweep per loop checks them, rather
        # than a timer made and cancelled for every connection.
        self.waiting_heads = set()
        self._defaults_of = None
        self._defaults = None

    def sweep_heads(self, now):
        """Called about twice a second on the loop: heads past --header-timeout."""
        late = [conn for conn in self.waiting_heads if conn.head_timer <= now]
        for conn in late:
            conn.head_timed_out()

    def defaults(self, server_headers):
        """uvicorn's default headers (date, ours), as a list that yields to the app's."""
        if server_headers is not self._defaults_of:
            self._defaults_of, self._defaults = server_headers, _Defaults(server_headers)
        return self._defaults


class _Defaults(list):
    """uvicorn writes ``default_headers + app_headers``: a default the app sets itself
    (Date from Flask's send_file, its own Server) is left out, so the response has one."""

    def __add__(self, other):
        if not other:
            return list(self)
        names = {name.lower() for name, _ in other}
        return [pair for pair in self if pair[0] not in names] + other


class _Http10KeepAliveCycle(RequestResponseCycle):
    """An HTTP/1.0 client keeps the connection only if the response says so."""

    async def send(self, message):
        if message["type"] == "http.response.start" and self.keep_alive:
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"keep-alive")]}
        await super().send(message)


class _LingeringTransport:
    """The transport a closing cycle gets: ``close()`` lingers (see Protocol._linger)."""

    def __init__(self, transport, protocol):
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def close(self):
        self._protocol.close_lingering()


class Protocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, serving, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.serving = serving
        self.reader = http1.RequestReader(self, serving.limits, serving.head_parser)
        self.head_timer = None     # the loop time the head must be complete by
        self.lingering = False
        self.lingered = 0
        self.tls = False
        self.close_after = False   # draining and not handed back: the next response closes

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport):
        super().connection_made(transport)
        self.tls = self.scheme == "https"
        self._arm_head_timer()
        if self.serving.draining:
            self.shutdown()

    def connection_lost(self, exc):
        self._cancel_head_timer()
        super().connection_lost(exc)

    def eof_received(self):
        if self.lingering:
            self.transport.close()

    def data_received(self, data):
        if self.lingering:
            self.lingered += len(data)
            if self.lingered > _LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        was_idle = self.reader.idle
        try:
            self.reader.feed(data)
        except http1.HTTPError as e:
            self._refuse(e.status)
            return
        if self.reader.idle:
            self._cancel_head_timer()
        elif was_idle and self.reader.head_pending:
            self._arm_head_timer()

    def _arm_head_timer(self):
        if self.head_timer is None and self.serving.header_timeout:
            self.head_timer = self.loop.time() + self.serving.header_timeout
            self.serving.waiting_heads.add(self)

    def _cancel_head_timer(self):
        if self.head_timer is not None:
            self.head_timer = None
            self.serving.waiting_heads.discard(self)

    def head_timed_out(self):
        self._cancel_head_timer()
        if self.transport.is_closing() or not self.reader.head_pending:
            return
        if self.reader.idle:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # connected and sent nothing: no one to answer
        else:
            self._refuse(408)

    def _refuse(self, status):
        """Answer a request we will not serve, then close."""
        self._cancel_head_timer()
        self.transport.write(error_response(status, self.serving.date.header(), self.serving.extra_headers))
        self._linger()

    def close_lingering(self):
        """A cycle ends the connection after its response."""
        if self.reader.buffer or self._bytes_waiting():
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
        sock = self.transport.get_extra_info("socket")
        return sock is not None and not self.tls and unread_bytes(sock.fileno()) > 0

    # -- the reader's callbacks ----------------------------------------------------
    def on_head(self, head):
        self._cancel_head_timer()
        headers = [(name.lower(), value) for name, value in head.headers]
        self.url = head.target
        self.headers = headers
        root = self.root_path
        raw_path = head.path
        if raw_path[:1] == b"/":
            if b"%" in raw_path or http1.has_obs_text(raw_path):
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
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
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
        self.expect_100_continue = head.expect_continue
        limit = self.serving.limit_concurrency
        # Requests in progress in the worker, as the WSGI server counts (uvicorn counts
        # per loop, and open connections too, idle keep-alive ones included).
        if limit is not None and self.serving.in_progress() >= limit:
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        keep_alive = head.keep_alive and not self.close_after and not (self.serving.draining and self.tls)
        transport = self.transport if keep_alive else _LingeringTransport(self.transport, self)
        cycle_class = _Http10KeepAliveCycle if keep_alive and head.version == "1.0" else RequestResponseCycle
        existing = self.cycle
        self.cycle = cycle_class(
            scope=scope, transport=transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.serving.defaults(self.server_state.default_headers),
            message_event=asyncio.Event(), expect_100_continue=head.expect_continue,
            keep_alive=keep_alive, on_response=self.on_response_complete)
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:
            self.flow.pause_reading()  # pipelined: served once the one before is done
            self.pipeline.appendleft((self.cycle, app))
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
        super().on_response_complete()
        if self.serving.draining and not self.transport.is_closing():
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


class _AccessFormatter(logging.Formatter):
    """uvicorn's access record (client, method, path?query, version, status) through
    --access-log-format; sizes and durations are not in the record: '-'."""

    def __init__(self, fmt):
        super().__init__()
        self.log = AccessLog(fmt)

    def format(self, record):
        try:
            client, method, target, version, status = record.args
        except (TypeError, ValueError):
            return super().format(record)
        path, _, query = str(target).partition("?")
        return self.log.line(client.rpartition(":")[0] or client, method, path, query,
                             f"HTTP/{version}", status, "-", 0.0, {})


def use_access_log_format(fmt):
    """Format uvicorn's access log lines with gunicorn's atoms."""
    formatter = _AccessFormatter(fmt)
    for handler in logging.getLogger("uvicorn.access").handlers:
        handler.setFormatter(formatter)
