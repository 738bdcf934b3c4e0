"""A Starlette app (ASGI) with lifespan, streaming and a websocket echo.

    python -m pyclusterc run starlette_app:app --app-dir examples -i 2
"""
import asyncio
import contextlib
import os
import threading

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.started = True
    yield
    marker = os.environ.get("LIFESPAN_MARKER_DIR")
    if marker:  # the tests check that shutdown ran in every worker (in every loop: --threads)
        with open(os.path.join(marker, f"shutdown-{os.getpid()}-{threading.get_native_id()}"), "w") as f:
            f.write("done")


async def index(request):
    return JSONResponse({"pid": os.getpid(), "started": getattr(request.app.state, "started", False)})


async def echo(request):
    return PlainTextResponse(await request.body())


async def stream(request):
    async def chunks():
        for i in range(5):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.01)
    return StreamingResponse(chunks(), media_type="text/plain")


async def slow(request):
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow done")


async def ws_echo(websocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app = Starlette(routes=[Route("/", index), Route("/echo", echo, methods=["POST"]),
                        Route("/stream", stream), Route("/slow", slow),
                        WebSocketRoute("/ws", ws_echo)], lifespan=lifespan)
