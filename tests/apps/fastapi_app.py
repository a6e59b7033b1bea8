"""A FastAPI (Starlette) application for tests/it/asgi.rs: path and query parameters,
validation errors, request bodies, lifespan state, streaming, background tasks and a
sync endpoint (run in a thread by anyio, which wakes the loop from that thread)."""

import asyncio
import threading
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

events = []


@asynccontextmanager
async def lifespan(app):
    yield {"db": "connected"}
    events.append("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return {"length": len(body), "head": body[:8].decode("latin-1")}


@app.get("/state")
async def state(request: Request):
    return {"db": request.state.db}


@app.get("/stream")
async def stream():
    async def chunks():
        for i in range(5):
            yield f"chunk{i}\n"
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/background")
async def background(tasks: BackgroundTasks):
    tasks.add_task(events.append, "background ran")
    return {"scheduled": True}


@app.get("/events")
async def get_events():
    return events


@app.get("/sync")
def sync_endpoint():
    return {"main_thread": threading.current_thread() is threading.main_thread()}


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(text.upper())
    except WebSocketDisconnect as e:
        events.append("ws closed %d" % e.code)
