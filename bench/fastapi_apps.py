"""A FastAPI JSON endpoint for bench/bench.py (the fastapi_json workload)."""

from fastapi import FastAPI

fastapi_json = FastAPI()


@fastapi_json.get("/")
async def root():
    return {"message": "Hello, World!", "items": [1, 2, 3]}
