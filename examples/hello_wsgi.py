"""The smallest WSGI app: `python -m pyclusterc run hello_wsgi:app --app-dir examples`."""


def app(environ, start_response):
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
