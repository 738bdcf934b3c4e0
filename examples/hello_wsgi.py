"""The smallest WSGI app: `python -m pyclusterc run hello_wsgi:app --app-dir examples`.

GET /block blocks its thread for 20 ms (bench/bench_serve.py's mixed load)."""
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/block":
        time.sleep(0.02)
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
