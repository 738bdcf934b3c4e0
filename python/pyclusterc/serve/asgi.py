"""Serve an ASGI app in a cluster worker with uvicorn's own protocol classes.

The primary hands connections over; each one becomes an HTTP protocol instance —
uvicorn's httptools protocol with pyclusterc's request reading (``serve.asgi_http``);
websockets upgrade through uvicorn's websocket classes — via
``loop.connect_accepted_socket``, as ``uvicorn.Server.startup`` does for its own
listening sockets (with ``--ssl-certfile`` the worker does the TLS handshake there).
Lifespan startup/shutdown runs once per event loop: once per worker, or once per loop
thread with ``--threads N``.
"""
import asyncio
import threading
import time

from .._lowlevel.wakeup import call_in_loop
from . import asgi_http
from .options import ssl_context, with_defaults
from .responses import Date, server_headers

# Exit status of a worker whose ASGI lifespan startup failed (as uvicorn's STARTUP_FAILURE).
LIFESPAN_FAILED = 3
_BEAT_SECONDS = 0.5


def run(app, listeners, settings, hooks):
    """Serve until hooks.on_stop fires; returns the worker's exit status.

    settings: the RunSettings (this package's options in ``serve.options``, and
    kill_timeout); hooks: see the package docstring (on_stop, ready, heartbeat, slot,
    live_counts)."""
    import uvicorn
    settings = with_defaults(settings)
    config = uvicorn.Config(
        app, lifespan="auto", interface="auto", http="httptools",
        log_level=settings.log_level,
        access_log=False,  # ours (serve.responses.AccessLog), written in batches
        proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.kill_timeout,
        timeout_keep_alive=settings.keep_alive,
        root_path=settings.root_path,
        # uvicorn's own server header off: ours (or none) and --header come as headers.
        server_header=False,
        headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in server_headers(settings)],
        loop="auto")
    config.load()
    slot = hooks.slot
    wrap = None
    if slot is not None and hooks.live_counts:
        counted_in = slot
        wrap = lambda app: _counting(app, counted_in)  # noqa: E731
        slot = None  # counted per request; the beat need not publish
    apps = asgi_http.request_apps(config.loaded_app, wrap)
    config.loaded_app = apps[1]  # websockets are served with the middleware
    loops = _Loops(settings.threads or 1, hooks.heartbeat, slot, hooks.ready)
    loops.hand_back = hooks.hand_back
    loops.apps = apps
    loops.metrics_slot = getattr(hooks, "metrics_slot", None)
    loops.ssl = ssl_context(settings)
    hooks.on_stop(loops.stop)
    # More than one loop: each runs in its own thread with its own uvicorn server state
    # and lifespan, and takes connections only while it is not blocked, so an app that
    # blocks its loop (a sync call) holds up 1/N of the worker rather than all of it.
    threads = [threading.Thread(target=loops.run, args=(index, config, listeners, settings),
                                name=f"pyclusterc-asgi-loop-{index}", daemon=True)
               for index in range(1, loops.count)]
    for thread in threads:
        thread.start()
    loops.run(0, config, listeners, settings)
    for thread in threads:
        thread.join()
    return LIFESPAN_FAILED if LIFESPAN_FAILED in loops.status else max(loops.status)


class _Loops:
    """The worker's event loops as one server: a stop reaches all of them, one failed
    lifespan stops the others, and the scoreboard sees the oldest loop's heartbeat
    (a stuck loop is a stuck worker) and uvicorn's counts summed over the loops."""

    def __init__(self, count, heartbeat, slot, ready):
        self.count = count
        self._ready = ready
        self._started = 0
        self.status = [0] * count
        self._heartbeat = heartbeat
        self._slot = slot
        self._stamps = [time.monotonic_ns()] * count
        self._states = []
        self._servings = []  # each loop's asgi_http.Serving
        self._stoppers = []
        self._stopping = False
        self._lock = threading.Lock()
        self.hand_back = None   # hooks.hand_back
        self.apps = None        # (direct, proxied): asgi_http.request_apps
        self.metrics_slot = None  # hooks.metrics_slot: each response's record, for metrics
        self.ssl = None         # the SSLContext with --ssl-certfile

    def run(self, index, config, listeners, settings):
        loop_factory = config.get_loop_factory() or asyncio.new_event_loop
        if not hasattr(asyncio, "Runner"):  # Python 3.10
            loop = loop_factory()
            try:
                self.status[index] = loop.run_until_complete(_serve(config, listeners, settings, self, index))
            finally:
                loop.close()
            return
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            self.status[index] = runner.run(_serve(config, listeners, settings, self, index))

    def on_stop(self, callback):
        with self._lock:
            self._stoppers.append(callback)
            stopping = self._stopping
        if stopping:
            callback()

    def stop(self):
        with self._lock:
            self._stopping = True
            stoppers = list(self._stoppers)
        for callback in stoppers:
            callback()

    def add_state(self, server_state, serving):
        with self._lock:
            self._states.append(server_state)
            self._servings.append(serving)

    def started(self):
        """One loop's lifespan startup completed: the worker is ready when all have."""
        with self._lock:
            self._started += 1
            all_started = self._started == self.count
        if all_started:
            self._ready()

    def requests_in_progress(self):
        """ASGI tasks running on every loop of this worker (--limit-concurrency), less
        those whose response is complete (Serving.answered_tasks)."""
        return (sum(len(state.tasks) for state in list(self._states))
                - sum(serving.answered_tasks for serving in list(self._servings)))

    def beat(self, index):
        self._stamps[index] = time.monotonic_ns()
        if self._heartbeat is not None:
            self._heartbeat(min(self._stamps))
        if self._slot is not None:
            states = list(self._states)
            self._slot.publish(sum(state.total_requests for state in states),
                               sum(len(state.tasks) for state in states),
                               sum(len(state.connections) for state in states))


async def _serve(config, listeners, settings, loops, index):
    import uvicorn
    server = uvicorn.Server(config)
    server.servers = []  # connections come from the primary, not from our own sockets
    server.lifespan = config.lifespan_class(config)
    await server.lifespan.startup()
    if server.lifespan.should_exit:
        loops.stop()
        return LIFESPAN_FAILED
    server.started = True
    loop = asyncio.get_running_loop()
    serving = asgi_http.Serving(settings, loops.hand_back, Date(), loops.metrics_slot)
    loops.add_state(server.server_state, serving)
    loops.started()
    serving.in_progress = loops.requests_in_progress
    serving.app, serving.proxied_app = loops.apps
    serving.extra_headers = b"".join(b"%s: %s\r\n" % pair for pair in server_headers(settings))

    def stop():
        serving.draining = True  # new connections and finished responses drain too
        server.should_exit = True
    loops.on_stop(lambda: call_in_loop(loop, stop))

    def create_protocol(_loop=None):
        return asgi_http.Protocol(config=config, server_state=server.server_state,
                                  app_state=server.lifespan.state, serving=serving, _loop=_loop)

    # With several loops, one connection per channel read: a loop must not take a batch
    # and then block on the first of it while the other loops are free.
    batch = 1 if loops.count > 1 else None
    if loops.ssl is not None:
        accept = [_accept_tls(listener, create_protocol, loops.ssl, settings.header_timeout)
                  for listener in listeners]
    else:
        accept = [_accept_loop(listener, create_protocol, batch) for listener in listeners]
    tasks = [loop.create_task(coro) for coro in accept]
    tasks.append(loop.create_task(_beat(loops, index)))
    tasks.append(loop.create_task(_sweep_deadlines(serving)))
    try:
        await server.main_loop()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in listeners:
            listener.close()
    await server.shutdown()
    if serving.access is not None:
        serving.access.flush()  # the last requests' lines
    return 0


async def _beat(loops, index):
    """Stamp the scoreboard while the loop runs: an app that blocks the loop stops it,
    and the primary replaces the worker after --timeout. Also publishes uvicorn's own
    request counts: no per-request cost where no policy reads them live."""
    while True:
        loops.beat(index)
        await asyncio.sleep(_BEAT_SECONDS)


async def _sweep_deadlines(serving):
    """--header-timeout and --keep-alive for this loop's connections (asgi_http.Serving)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0.25)
        serving.sweep(loop.time())
        if serving.access is not None:
            serving.access.flush()


async def _accept_loop(listener, create_protocol, batch):
    while not listener.closed:
        try:
            await listener.serve(create_protocol, batch)
        except (ValueError, OSError):
            if listener.closed:
                return
            # A broken read off the channel: keep serving.


async def _accept_tls(listener, create_protocol, context, handshake_timeout):
    """TLS: the primary passes the raw TCP connection; the handshake happens here."""
    loop = asyncio.get_running_loop()

    async def start(sock):
        try:
            await loop.connect_accepted_socket(create_protocol, sock, ssl=context,
                                               ssl_handshake_timeout=handshake_timeout or None)
        except (OSError, asyncio.TimeoutError, ValueError):
            sock.close()  # a failed handshake: that client's problem only
    starting = set()
    while not listener.closed:
        try:
            sock, _ = await listener.accept_async()
        except (ValueError, OSError):
            if listener.closed:
                return
            continue
        task = loop.create_task(start(sock))
        starting.add(task)
        task.add_done_callback(starting.discard)


def _counting(app, slot):
    """Report in-flight HTTP requests to the scoreboard as they start and finish
    (the `least` policy reads them live)."""
    started, finished = slot.request_started, slot.request_finished

    async def counted(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started()
        try:
            return await app(scope, receive, send)
        finally:
            finished()
    return counted
