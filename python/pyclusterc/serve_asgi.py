"""Serve an ASGI app in a cluster worker with uvicorn's own protocol classes.

The primary hands connections over; each one becomes a uvicorn HTTP protocol instance
(httptools, or h11 without it; websockets upgrade through uvicorn's websocket classes)
via ``loop.connect_accepted_socket`` — the same factory ``uvicorn.Server.startup``
builds for its own listening sockets. Lifespan startup/shutdown runs once per worker.
"""
import asyncio

# Exit status of a worker whose ASGI lifespan startup failed (as uvicorn's STARTUP_FAILURE).
LIFESPAN_FAILED = 3


def run(app, listeners, options, on_stop):
    """Serve until on_stop fires; returns the worker's exit status.

    options: log_level, access_log, kill_timeout, interface ("asgi3" | "asgi2"), slot."""
    import uvicorn
    config = uvicorn.Config(
        app, lifespan="auto", interface=options.get("interface", "auto"),
        log_level=options.get("log_level", "info"), access_log=options.get("access_log", False),
        proxy_headers=False, timeout_graceful_shutdown=options.get("kill_timeout"),
        loop="auto")
    config.load()
    loop_factory = config.get_loop_factory()
    runner = asyncio.Runner(loop_factory=loop_factory) if hasattr(asyncio, "Runner") else None
    if runner is None:  # Python 3.10
        if loop_factory is not None:
            asyncio.set_event_loop(loop_factory())
        else:
            asyncio.set_event_loop(asyncio.new_event_loop())
        return asyncio.get_event_loop().run_until_complete(_serve(config, listeners, options, on_stop))
    with runner:
        return runner.run(_serve(config, listeners, options, on_stop))


async def _serve(config, listeners, options, on_stop):
    import uvicorn
    server = uvicorn.Server(config)
    server.servers = []  # connections come from the primary, not from our own sockets
    server.lifespan = config.lifespan_class(config)
    await server.lifespan.startup()
    if server.lifespan.should_exit:
        return LIFESPAN_FAILED
    server.started = True
    loop = asyncio.get_running_loop()
    on_stop(lambda: loop.call_soon_threadsafe(setattr, server, "should_exit", True))
    if options.get("slot") is not None:
        config.loaded_app = _counting(config.loaded_app, options["slot"])

    def create_protocol(_loop=None):
        return config.http_protocol_class(config=config, server_state=server.server_state,
                                          app_state=server.lifespan.state, _loop=_loop)

    acceptors = [loop.create_task(_accept_loop(loop, listener, create_protocol)) for listener in listeners]
    if options.get("heartbeat") is not None:
        acceptors.append(loop.create_task(_beat(options["heartbeat"])))
    try:
        await server.main_loop()
    finally:
        for task in acceptors:
            task.cancel()
        await asyncio.gather(*acceptors, return_exceptions=True)
        for listener in listeners:
            listener.close()
    await _let_first_requests_in(server, min(1.0, options.get("kill_timeout") or 1.0))
    await server.shutdown()
    return 0


async def _beat(beat):
    """Stamp the scoreboard while the loop runs: an app that blocks the loop stops it,
    and the primary replaces the worker after --timeout."""
    while True:
        beat()
        await asyncio.sleep(1.0)


async def _let_first_requests_in(server, limit):
    """uvicorn's shutdown closes every connection with no request in progress, including
    one accepted a moment ago whose request is in flight from the client; a reload would
    drop that request. Give such connections (no request parsed yet) `limit` seconds to
    start one; uvicorn then lets it finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline and any(getattr(conn, "cycle", True) is None
                                         for conn in server.server_state.connections):
        await asyncio.sleep(0.01)


async def _accept_loop(loop, listener, create_protocol):
    # Listener.serve keeps its readers registered for the whole loop: no epoll_ctl and
    # no extra task wake-up per connection (accept_async registers them per call).
    while not listener.closed:
        try:
            await listener.serve(create_protocol)
        except (ValueError, OSError):
            if listener.closed:
                return
            # A client that went away before its protocol started: keep serving.


def _counting(app, slot):
    """Report in-flight HTTP requests to the scoreboard (the `least` policy reads it)."""
    async def counted(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        slot.request_started()
        try:
            return await app(scope, receive, send)
        finally:
            slot.request_finished()
    return counted
