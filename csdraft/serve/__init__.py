"""``csdraft serve``: the cascade behind an OpenAI-compatible HTTP API (the ``serve`` extra:
FastAPI, uvicorn, prometheus-client). ``app.create_app`` builds the app over any ladder loader;
``run_serve`` is the command. Nothing here imports the extra until it is used."""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csdraft.errors import CsdraftError, UsageError

EXTRA = ("fastapi", "uvicorn", "prometheus_client")


def check_extra() -> None:
    """A one-line UsageError when the serve extra is not installed."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"csdraft serve needs {', '.join(missing)}: pip install 'csdraft[serve]'")


def run_serve(
    ladder: str | None = None,
    config: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = 16,
    concurrency: int = 4,
) -> None:
    """Check the ladder, start the server at once (/health says 'loading'), load the models in
    the background, serve until SIGINT or SIGTERM (in-flight generations cancelled)."""
    check_extra()
    import uvicorn

    from csdraft.api import Ladder
    from csdraft.ladder import get_ladder
    from csdraft.serve.app import create_app

    spec = get_ladder(ladder, config)  # a bad ladder fails here, before anything listens
    _check_address(host, port)
    failure: list[str] = []

    def failed(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    app = create_app(
        lambda: Ladder.load(spec, progress=True), api_key, max_queue, failed, concurrency
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.server.stop()  # generations in flight end now, not after a timeout
            super().handle_exit(sig, frame)

    config_ = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10
    )
    server = Server(config_)
    print(
        f"csdraft serve: ladder '{spec.name}' on http://{host}:{port}/v1 "
        "(loading; GET /health says when ready)",
        file=sys.stderr,
    )
    with _stopped_by_signals():
        server.run()
    _drain()
    if failure:
        raise CsdraftError(f"loading ladder '{spec.name}' failed: {failure[0]}")


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the server (uvicorn's own handlers), then nothing more: uvicorn
    raises the signal again once it has shut down, which would kill the process; a shutdown
    the user asked for exits 0."""
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda *_: None) for s in stops}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _drain(seconds: float = 30.0) -> None:
    """Wait for the worker threads (cancelled generations stop at their next pass; a load
    stops when it is done): the interpreter must not exit under a running forward pass."""
    import threading
    import time

    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread.name.startswith("csdraft-"):
            if thread.name == "csdraft-load" and thread.is_alive():
                print("csdraft serve: waiting for the models to finish loading", file=sys.stderr)
            thread.join(max(0.0, deadline - time.monotonic()))


def _check_address(host: str, port: int) -> None:
    """A one-line error now, not uvicorn's after start-up, when ``host:port`` cannot be bound."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CsdraftError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host"
            ) from None
