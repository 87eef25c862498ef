"""FastAPI example for Tako: served by uvicorn on 127.0.0.1:$PORT, /_tako/status answered by the Tako SDK."""

import asyncio

import tako_sdk
from fastapi import FastAPI

app = FastAPI(title="Tako FastAPI example")
app.add_middleware(tako_sdk.ASGIMiddleware)


@app.get("/")
async def index() -> dict[str, object]:
    tako = tako_sdk.env()
    return {
        "message": "Hello from FastAPI on Tako",
        "env": tako.env,
        "version": tako.build,
        "instance": tako.instance,
    }


@app.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, float]:
    """A request that takes a while: deploy or stop during it to see graceful shutdown finish it."""
    print(f"slow request started ({seconds} s)", flush=True)
    await asyncio.sleep(min(seconds, 20.0))
    return {"slept": seconds}
