"""A WSGI app whose worker dies on GET /crash (the primary must start a new one)."""
import json
import os


def app(environ, start_response):
    if environ["PATH_INFO"] == "/crash":
        os._exit(7)
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
