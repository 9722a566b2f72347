"""The FastAPI app: OpenAI-compatible completions over a ladder loaded once, in the background."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from csdraft.api import Ladder
from csdraft.errors import CsdraftError
from csdraft.serve import responses
from csdraft.serve.metrics import Metrics
from csdraft.serve.protocol import ApiError, parse_request
from csdraft.serve.protocol import Request as Parsed
from csdraft.serve.worker import Gate, Job, StopText
from csdraft.text import Detokenizer
from csdraft.trace import Commit, Event, Finish, Stats

log = logging.getLogger("csdraft.serve")
MAX_BODY = 4 * 1024 * 1024
"""The largest request body accepted (413 beyond)."""


class Server:
    """What the routes share: the ladder once loaded, the gate, the metrics, live jobs."""

    def __init__(
        self, loader: Callable[[], Ladder], api_key: str | None, max_queue: int, concurrency: int
    ) -> None:
        self.loader = loader
        self.api_key = api_key
        self.gate = Gate(max_queue, concurrency)
        self.metrics = Metrics()
        self.ladder: Ladder | None = None
        self.error: str | None = None
        self.jobs: set[Job] = set()

    def load(self, on_error: Callable[[str], None] | None) -> None:
        """Load the ladder (in a background thread): /health says when it is ready."""
        try:
            self.ladder = self.loader()
        except Exception as e:  # reported on /health and by on_error, never as a traceback
            self.error = str(e) if isinstance(e, CsdraftError) else f"{type(e).__name__}: {e}"
            log.error("csdraft serve: loading the ladder failed: %s", self.error)
            if on_error is not None:
                on_error(self.error)

    def stop(self) -> None:
        """Shutting down: cancel every generation in flight (each ends with a 503 error)."""
        for job in list(self.jobs):
            job.cancel()

    def ready(self) -> Ladder:
        if self.ladder is None:
            raise ApiError(
                503,
                "the model failed to load (see the server's log)"
                if self.error
                else "the model is loading; retry soon",
                None,
                "model_failed" if self.error else "model_loading",
                "service_unavailable",
            )
        return self.ladder

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                None,
                "invalid_api_key",
                "authentication_error",
            )


def create_app(
    ladder_loader: Callable[[], Ladder],
    api_key: str | None = None,
    max_queue: int = 16,
    on_load_error: Callable[[str], None] | None = None,
    concurrency: int = 1,
) -> FastAPI:
    """The app serving the ladder ``ladder_loader`` returns (called once, in a thread started
    with the server). ``api_key``: required as a bearer token on /v1; ``max_queue``: requests
    that may wait beyond the ``concurrency`` generating together (429 beyond)."""
    server = Server(ladder_loader, api_key, max_queue, concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(
            target=server.load, args=(on_load_error,), name="csdraft-load", daemon=True
        ).start()
        yield
        server.stop()

    app = FastAPI(
        title="csdraft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        return JSONResponse(e.body(), e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(
            ApiError(e.status_code, str(e.detail), code=f"http_{e.status_code}").body(),
            e.status_code,
        )

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("csdraft serve: a request failed")
        error = ApiError(500, f"internal error ({type(e).__name__})", None, None, "server_error")
        return JSONResponse(error.body(), 500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.ladder is not None:
            return JSONResponse({"status": "ok", "model": server.ladder.spec.name})
        if server.error:  # its message (paths...) goes to the server's log only
            return JSONResponse({"status": "failed"}, 500)
        return JSONResponse({"status": "loading"}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        text = server.metrics.text(server.gate.waiting, server.gate.running)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        server.check_key(request)
        ladder = server.ready()
        model = {"id": ladder.spec.name, "object": "model", "created": 0, "owned_by": "csdraft"}
        server.metrics.requests.labels("models", "200").inc()
        return JSONResponse({"object": "list", "data": [model]})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> JSONResponse:
        """Forget every stored prompt prefix (vLLM's endpoint of that name), so that what runs
        next computes its prompts in full, as after a restart (a load test's two sides)."""
        server.check_key(request)
        server.ready().forget_prompts()
        server.metrics.requests.labels("reset_prefix_cache", "200").inc()
        return JSONResponse({"status": "ok"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await complete(server, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(server, request, "completion")

    return app


async def complete(server: Server, request: Request, kind: str) -> Response:
    """One completion request: checked, queued, generated in a worker thread, answered whole
    or as server-sent events."""
    endpoint = "chat" if kind == "chat" else "completions"
    try:
        server.check_key(request)
        ladder = server.ready()
        parsed = parse_request(await read_json(request), kind, ladder)
        if not server.gate.admit():
            raise ApiError(
                429, "the queue is full; retry later", None, "queue_full", "rate_limit_error"
            )
    except ApiError as e:
        server.metrics.requests.labels(endpoint, str(e.status)).inc()
        raise
    answer = Answer(
        server, request, parsed, Job(ladder, server.gate, parsed.prompt_ids, parsed.spec)
    )
    if parsed.stream:
        return StreamingResponse(answer.sse(), media_type="text/event-stream")
    try:
        text = "".join([piece async for piece in answer.pieces()])
    except CsdraftError as e:
        raise ApiError(400, str(e)) from None
    finally:
        answer.close()
    return JSONResponse(answer.body(text))


async def read_json(request: Request) -> Any:
    """The body as JSON: a 413 over ``MAX_BODY``, a 400 when it is not JSON."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes", None, "body_too_large")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY:
            raise ApiError(
                413, f"the request body is over {MAX_BODY} bytes", None, "body_too_large"
            )
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", None, "invalid_json") from None


class Answer:
    """One request's generation as its client sees it: text pieces (stop strings cut off),
    then the finish, the usage and the ``csdraft`` record; cancelled if the client goes."""

    def __init__(self, server: Server, request: Request, parsed: Parsed, job: Job) -> None:
        self.server, self.request, self.parsed, self.job = server, request, parsed, job
        self.kind = parsed.kind
        self.model = job.ladder.spec.name
        self.id = responses.new_id(self.kind)
        self.events: list[Event] = []
        self.cut = StopText(parsed.stops)
        self.detok = Detokenizer(job.ladder.tokenizer)
        self.start = time.perf_counter()
        self.closed = False
        server.jobs.add(job)
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Cancel the generation when the client disconnects."""
        while not self.job.finished.is_set():
            if await self.request.is_disconnected():
                self.job.cancel()
                return
            await asyncio.sleep(0.1)

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it becomes final."""
        async for event in self.job.events():
            self.events.append(event)
            if isinstance(event, Commit):
                text = self.cut.add("".join(self.detok.add(t) for t in event.tokens))
                if text:
                    yield text
        if tail := self.cut.add("", final=True):
            yield tail
        if self.job.cancelled.is_set() and not any(isinstance(e, Finish) for e in self.events):
            raise ApiError(
                503,
                "the generation was cancelled: the server is shutting down",
                None,
                "shutting_down",
                "service_unavailable",
            )

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events if isinstance(e, Commit) for t in e.tokens]

    def finish(self) -> str:
        return (
            "stop"
            if self.cut.stopped
            else responses.FINISH.get(Stats.of(self.events).finish, "stop")
        )

    def record(self) -> dict[str, Any]:
        return responses.csdraft_object(self.events, self.token_ids, self.job.queue_s)

    def usage(self) -> dict[str, int]:
        return responses.usage(len(self.parsed.prompt_ids), len(self.token_ids))

    def body(self, text: str) -> dict[str, Any]:
        return responses.body(
            self.kind, self.id, self.model, text, self.finish(), self.usage(), self.record()
        )

    async def sse(self) -> AsyncIterator[str]:
        """The response as server-sent events, as the OpenAI API streams them."""

        def event(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data)}\n\n"

        def chunk(**fields: Any) -> str:
            return event(responses.chunk(self.kind, self.id, self.model, **fields))

        try:
            if self.kind == "chat":
                yield chunk(role=True)
            async for text in self.pieces():
                yield chunk(text=text)
            yield chunk(finish=self.finish(), record=self.record())
            if self.parsed.include_usage:
                yield chunk(counts=self.usage())
        except ApiError as e:  # the stream has begun: the error goes in it, then it ends
            yield event(e.body())
        except CsdraftError as e:
            yield event(ApiError(400, str(e)).body())
        except Exception as e:
            log.exception("csdraft serve: a streamed request failed")
            yield event(
                ApiError(500, f"internal error ({type(e).__name__})", kind="server_error").body()
            )
        finally:
            self.close()
        yield "data: [DONE]\n\n"  # not reached when the client is gone (the generator closed)

    def close(self) -> None:
        """The request is over (answered, failed or its client gone): stop the generation if
        it still runs, and count it."""
        if self.closed:
            return
        self.closed = True
        self.job.cancel()
        self.watcher.cancel()
        self.server.jobs.discard(self.job)
        finished = bool(self.events) and Stats.of(self.events).finish != ""
        endpoint = "chat" if self.kind == "chat" else "completions"
        metrics = self.server.metrics
        metrics.requests.labels(endpoint, "200" if finished else "cancelled").inc()
        if not finished:
            metrics.cancelled.inc()
        if self.events:
            metrics.generation(
                self.record(), len(self.parsed.prompt_ids), time.perf_counter() - self.start
            )
