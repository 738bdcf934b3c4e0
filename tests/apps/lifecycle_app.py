"""An ASGI app (`app`) and a WSGI app (`wsgi`) whose start is set by a file, so that a
reload can switch versions: LIFECYCLE_FILE holds JSON {"delay": seconds to take starting
up, "fail": true to fail the start} (ASGI: in lifespan startup; WSGI: at import).

GET / -> {"pid": ..., "index": PYCLUSTERC_WORKER_ID}."""
import asyncio
import json
import os
import time


def _behaviour():
    path = os.environ.get("LIFECYCLE_FILE")
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _body():
    return json.dumps({"pid": os.getpid(), "index": os.environ.get("PYCLUSTERC_WORKER_ID")}).encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                behaviour = _behaviour()
                await asyncio.sleep(behaviour.get("delay", 0))
                if behaviour.get("fail"):
                    await send({"type": "lifespan.startup.failed", "message": "startup failed on purpose"})
                    return
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _body()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_import_behaviour = _behaviour() if os.environ.get("LIFECYCLE_WSGI") else {}
time.sleep(_import_behaviour.get("delay", 0))
if _import_behaviour.get("fail"):
    raise RuntimeError("import failed on purpose")


def wsgi(environ, start_response):
    body = _body()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
