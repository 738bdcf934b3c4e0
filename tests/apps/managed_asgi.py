"""An ASGI app for the process-management tests.

GET /       -> {"pid": ...}
GET /grow   -> keeps 64 MiB more in this worker (--max-memory-restart)
GET /hang   -> blocks the event loop for good (--timeout)
READY_DELAY (env): call pyclusterc.ready() that many seconds after import (--wait-ready);
READY_DELAY_FILE (env): the same, with the delay read from that file at import ("never": no call);
CRASH_AFTER (env): the worker exits with status 3 that many seconds after import."""
import json
import os
import threading
import time

import pyclusterc

_hoard = []

if os.environ.get("READY_DELAY"):
    threading.Timer(float(os.environ["READY_DELAY"]), pyclusterc.ready).start()
if os.environ.get("READY_DELAY_FILE"):
    with open(os.environ["READY_DELAY_FILE"]) as f:
        _delay = f.read().strip()
    if _delay != "never":
        threading.Timer(float(_delay), pyclusterc.ready).start()
if os.environ.get("CRASH_AFTER"):
    threading.Timer(float(os.environ["CRASH_AFTER"]), os._exit, (3,)).start()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/grow":
        _hoard.append(b"x" * (64 << 20))  # written, so resident
    elif path == "/hang":
        time.sleep(3600)
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
