"""App factories: ``create_wsgi(greeting)`` and ``create_asgi(greeting)`` return apps
that answer with the greeting (--factory, or module:create_wsgi('hi') in the target)."""


def create_wsgi(greeting="hello"):
    body = greeting.encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app


def create_asgi(greeting="hello"):
    body = greeting.encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    return app
