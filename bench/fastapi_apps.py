"""A FastAPI JSON endpoint for bench/asgi.py (the issue's "FastAPI JSON" workload)."""

from fastapi import FastAPI

fastapi_json = FastAPI()


@fastapi_json.get("/")
async def root():
    return {"message": "Hello, World!", "items": [1, 2, 3]}
