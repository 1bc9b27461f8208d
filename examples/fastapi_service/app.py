"""A multi-worker FastAPI service on router_plugin: one Router per worker process, every counter in one Redis.

    export REDIS_URL=redis://localhost:6379/0 OPENROUTER_API_KEY=sk-or-... GROQ_API_KEY=gsk_...
    uvicorn --app-dir examples/fastapi_service app:app --workers 4 --port 8000
    # or: gunicorn --chdir examples/fastapi_service app:app -k uvicorn.workers.UvicornWorker -w 4 -b 127.0.0.1:8000

    curl -s localhost:8000/ask -H 'content-type: application/json' -d '{"prompt": "Say hello"}'

``ROUTER_CONFIG`` names the LiteLLM config (default: this repository's ``configs/litellm_config.yaml``; a relative
path is relative to the working directory); ``configs/litellm_config.offline.yaml`` runs it against the simulator.
"""

from __future__ import annotations

import math
import os
from contextlib import asynccontextmanager
from pathlib import Path

import litellm
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import router_plugin

CONFIG = os.environ.get("ROUTER_CONFIG") or str(Path(__file__).resolve().parents[2] / "configs" / "litellm_config.yaml")


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Once per worker process: each worker builds its own Router; all of them share the counters in Redis.
    app.state.router = router_plugin.build_router(CONFIG)
    yield


app = FastAPI(title="router_plugin example", lifespan=lifespan)


class Ask(BaseModel):
    prompt: str = Field(min_length=1)
    model: str = "free-chat"  # a model group (chain) of the config
    max_tokens: int = Field(default=256, ge=1, le=8192)  # what gets reserved against token limits


@app.post("/ask")
async def ask(body: Ask) -> dict:
    metadata: dict = {}  # router_plugin fills metadata["router_plugin"]: model, attempts, remaining
    try:
        response = await app.state.router.acompletion(
            model=body.model, messages=[{"role": "user", "content": body.prompt}], max_tokens=body.max_tokens,
            metadata=metadata,
        )
    except router_plugin.QuotaExhaustedError as exc:  # nothing in the chain has quota now: tell the client when
        wait = exc.retry_after_s
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else None
        raise HTTPException(status_code=429, detail=str(exc), headers=headers) from None
    except litellm.BadRequestError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except Exception as exc:  # every deployment of the chain failed upstream
        raise HTTPException(status_code=502, detail=f"{type(exc).__name__}: {exc}") from None
    info = metadata.get("router_plugin", {})
    return {
        "answer": response.choices[0].message.content,
        "model": info.get("model"),  # the deployment that served it
        "attempts": info.get("attempts"),
        "remaining": info.get("remaining"),  # quota left in the pool it drew on, e.g. {"minute": 17, "day": 47}
        "worker": os.getpid(),
    }


@app.get("/healthz")
async def healthz() -> dict:
    return {"ok": True, "worker": os.getpid()}
