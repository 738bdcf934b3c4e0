"""Apps that answer with what the server made of the request, as JSON: the corpus
tests compare it with gunicorn's expectations. ``wsgi_app`` (behind wsgiref.validate)
and ``asgi_app``; both also serve /date (the app sets its own Date), /stream (a body
of unknown length), /slow?s=SECONDS and /raise (the app fails: a 500)."""
import json
import os
import time
from wsgiref.validate import validator


def _wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("asked to fail")
    if path == "/slow":
        time.sleep(float(environ["QUERY_STRING"].partition("=")[2] or 1))
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if path == "/date":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Date", "Tue, 01 Dec 2020 00:00:00 GMT"),
                                  ("Content-Length", "2")])
        return [b"ok"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a", b"b", b"c"])
    info = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path": path,
        "query": environ["QUERY_STRING"],
        "scheme": environ["wsgi.url_scheme"],
        "protocol": environ["SERVER_PROTOCOL"],
        "headers": {key: value for key, value in environ.items()
                    if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")},
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
    }
    out = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


wsgi_app = validator(_wsgi)


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("asked to fail")
    if path == "/slow":
        import asyncio
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 1))
    if path == "/date":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"date", b"Tue, 01 Dec 2020 00:00:00 GMT"),
                                (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for piece in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    info = {
        "method": scope["method"],
        "root_path": scope["root_path"],
        "path": path,
        "query": scope["query_string"].decode("latin-1"),
        "scheme": scope["scheme"],
        "protocol": "HTTP/" + scope["http_version"],
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
    }
    out = json.dumps(info).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
