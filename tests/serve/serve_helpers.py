"""Tiny ladders behind the server: one built and loaded per session (its target's tokenizer
given a chat template), apps over it with FastAPI's test client, and a real uvicorn server on
a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from tiny_ladder import make_tiny_ladder  # noqa: E402

from csdraft.api import Ladder, load  # noqa: E402
from csdraft.serve.app import create_app  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}w0{% endif %}"
)
PROMPT = "w1 w2 w3 w4 w1 w2 w3"
MODEL = "tiny"


def build_ladder(root: Path) -> Ladder:
    """A tiny random ladder (target, one drafter, Max-Gram) whose tokenizers have a chat
    template, loaded."""
    from transformers import AutoTokenizer

    config = make_tiny_ladder(root, drafters=1, maxgram=True)
    for model in ("target", "drafter1"):
        tok = AutoTokenizer.from_pretrained(root / model)
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(root / model)
    return load(None, config)


def wait_ready(client, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.02)


@contextlib.contextmanager
def app_client(ladder, **settings) -> Iterator[TestClient]:
    """A test client over an app serving ``ladder`` (already loaded), once it is ready."""
    app = create_app(lambda: ladder, **settings)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@contextlib.contextmanager
def live_server(ladder, **settings) -> Iterator[tuple[str, object]]:
    """A real uvicorn server over ``ladder`` on a free port of 127.0.0.1, in a thread: its base
    URL and the app."""
    import httpx
    import uvicorn

    app = create_app(lambda: ladder, **settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as client:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.05)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def completion(**fields) -> dict:
    """A completions request body for the tiny ladder."""
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, **fields}


def chat(content: str = PROMPT, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def sse_events(text: str) -> list:
    """The data of each server-sent event ('[DONE]' as it is, the rest as JSON)."""
    import json

    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
