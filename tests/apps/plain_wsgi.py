"""A plain WSGI app, wrapped in wsgiref.validate so the server's PEP 3333 conformance is
checked on every request (a violation raises AssertionError -> 500)."""
import json
import os
import time
from wsgiref.validate import validator


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":  # no Content-Length: the server must chunk it
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"chunk {i}\n".encode() for i in range(5))
    if path == "/slow":
        time.sleep(float(environ["QUERY_STRING"].partition("=")[2] or 1))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"slow done"]
    if path == "/environ":
        keys = {k: v for k, v in environ.items() if isinstance(v, str)}
        body = json.dumps(keys).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/boom":
        raise RuntimeError("boom")
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
