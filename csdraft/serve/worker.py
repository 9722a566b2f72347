"""Generations in worker threads, fed back to the event loop; the gate they pass to reach the
ladder; and the text a client sees (stop strings cut off, as the OpenAI API does)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from csdraft.api import Ladder
from csdraft.trace import Event

_END = object()


class Gate:
    """Where every generation takes its turn on the ladder, and the queue in front of it.

    ``slots`` generations run at once: concurrent ``Ladder.stream`` calls share their model
    passes (``csdraft.engine.batch``), each output exactly what it is alone. ``max_queue``
    requests may wait beyond the ones running; ``admit`` refuses the next."""

    def __init__(self, max_queue: int, slots: int = 1) -> None:
        self.max_queue = max_queue
        self.slots = slots
        self._ladder = threading.BoundedSemaphore(slots)
        self._count = threading.Lock()
        self.admitted = 0  # waiting or running
        self.running = 0

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def admit(self) -> bool:
        """Count one more request in, unless the queue is full."""
        with self._count:
            if self.admitted >= self.max_queue + self.slots:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        """A request admitted by ``admit`` is done (finished, failed or cancelled)."""
        with self._count:
            self.admitted -= 1

    @contextmanager
    def turn(self, cancelled: threading.Event) -> Iterator[bool]:
        """Hold the ladder (yields False, without it, if ``cancelled`` while waiting)."""
        while not self._ladder.acquire(timeout=0.05):
            if cancelled.is_set():
                yield False
                return
        with self._count:
            self.running += 1
        try:
            yield not cancelled.is_set()
        finally:
            with self._count:
                self.running -= 1
            self._ladder.release()


class Job:
    """One generation running in its own thread; ``events()`` gives its events on the event
    loop. ``cancel()`` (a client gone) stops it at its next event and frees its caches."""

    def __init__(self, ladder: Ladder, gate: Gate, prompt_ids: list[int], spec: Any) -> None:
        self.ladder, self.gate, self.prompt_ids, self.spec = ladder, gate, prompt_ids, spec
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.queue_s = 0.0
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(target=self._work, name="csdraft-generation", daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutting down)
            self.cancelled.set()

    def _work(self) -> None:
        start = time.perf_counter()
        try:
            with self.gate.turn(self.cancelled) as ours:
                self.queue_s = time.perf_counter() - start
                if ours:
                    stream = self.ladder.stream(self.prompt_ids, spec=self.spec)
                    try:
                        for event in stream:
                            if self.cancelled.is_set():
                                break
                            self._put(event)
                    finally:
                        stream.close()  # frees the rungs' caches now, not when collected
        except Exception as e:  # reported to the client as a 500 without internals
            self._put(e)
        finally:
            self.gate.leave()
            self.finished.set()
            self._put(_END)

    async def events(self) -> AsyncIterator[Event]:
        """The events as they come (an exception raised in the worker is raised here)."""
        while (item := await self._items.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Where the earliest stop string begins in ``text`` at or after ``start`` (None: none)."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


class StopText:
    """The text a client gets, piece by piece: cut before the first stop string (the engine
    stops after the token that completes it, as ``csdraft generate`` does), holding back a tail
    that could begin one until more text or the end shows it does not."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, piece: str, final: bool = False) -> str:
        """Add ``piece``; return the text now safe to send (all of it when ``final``)."""
        if self.stopped:
            return ""
        self.text += piece
        cut = first_stop(self.text, self.stops, self.sent)  # a stop begins after what was sent
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
        end = (
            len(self.text) if final or self.stopped else max(self.sent, len(self.text) - self.hold)
        )
        out, self.sent = self.text[self.sent : end], end
        return out
