"""The smallest ASGI app: `python -m pyclusterc run hello_asgi:app --app-dir examples`.

GET /block blocks the worker for 20 ms (bench/bench_serve.py's mixed load)."""
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/block":
        time.sleep(0.02)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
