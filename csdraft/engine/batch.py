"""Many generations at once: each runs its own cascade in its own thread (exactly a single
generation's code), and their model passes are batched by one scheduler.

A generation is a *member* of a ``Batcher`` while its events are being produced
(``Batcher.run``). A member is *active* while its engine code runs, *blocked* once it hands a
pass to the batcher (``submit``) and *idle* while its consumer holds an event. When no member is
active and some passes wait, one step runs: one waiting ``group`` of jobs (one model's
sessions, where sharing a pass is exact) goes through one forward pass, every job that must run
alone runs alone, and their members are woken (``_pick`` says which group). A step that could
start while some members are idle waits up to ``LINGER_S`` for them to hand in their next pass,
so the members stay in step: each step takes every member's pass, not those of the members that
happened to be back. A generation alone runs its steps in its own thread, with no hand-off;
while several run, every step runs in the batcher's one *pass thread*, whichever member asked
for it: torch's OpenMP keeps a pool of worker threads for each thread that calls into it, and
the pools of several calling threads compete for the same cores (measured: docs/batching.md).
The pass thread starts when a second member joins and ends when one is left. A caller that
starts generations only to wait for them may lend its own thread instead (``drive``): every step
runs there until it is done (``_turn`` is the one rule).
Members join and leave between steps; one that ends or is closed early frees its caches at once
(its cascade's own ``release``).

The scheduler knows nothing of models: a job is a payload and a function that runs a list of
payloads in one pass (``csdraft.models.pooled`` makes the jobs and says which may share a pass).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

Run = Callable[[list[Any]], list[Any]]
"""Runs the payloads of some jobs in one pass and returns their results, in order."""

LINGER_S = 0.005
"""How long a step that could start waits for idle members to come back (``Batcher``). Their
consumers usually hand an event on at once (``serve`` queues it for the event loop, ``iter_many``
keeps it), but the member's thread then waits for the GIL, up to Python's switch interval (5
ms); without the wait, ``csdraft serve``'s steps took 2-3 of its 4 members' passes instead of 4
(docs/batching.md). A consumer slower than this costs the others at most this much per step."""


@dataclass(eq=False)
class Job:
    """One pass a member waits for: ``run([payload])`` alone, or with other jobs of the same
    non-None ``group`` in one ``run`` call."""

    run: Run
    payload: Any
    group: Hashable | None = None
    order: int = 0
    """Among waiting groups, those of the highest order run first (see ``Batcher._pick``)."""
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    abandoned: bool = False
    """Its member stopped waiting (an exception such as KeyboardInterrupt while blocked)."""


@dataclass
class BatchCounts:
    """What the scheduler did: steps, forward passes (``run`` calls) and jobs run."""

    steps: int = 0
    passes: int = 0
    jobs: int = 0
    widest: int = 0
    """The most jobs that shared one pass."""
    shared: dict[int, list[int]] = field(default_factory=dict)
    """By order (``pooled``: the rung), the shared passes run and the jobs they took."""

    def __add__(self, other: BatchCounts) -> BatchCounts:
        """What two stretches of scheduling did together."""
        shared = {k: list(v) for k, v in self.shared.items()}
        for k, (p, j) in other.shared.items():
            tally = shared.setdefault(k, [0, 0])
            tally[0], tally[1] = tally[0] + p, tally[1] + j
        return BatchCounts(
            self.steps + other.steps,
            self.passes + other.passes,
            self.jobs + other.jobs,
            max(self.widest, other.widest),
            shared,
        )


class Batcher:
    """The scheduler of one loaded ladder (see the module). Thread-safe."""

    def __init__(self, linger_s: float = LINGER_S) -> None:
        self.counts = BatchCounts()
        self.linger_s = linger_s
        self._cond = threading.Condition()
        self._jobs: list[Job] = []
        self._members = 0  # generations running through ``run``
        self._active = 0  # members running engine code (neither blocked nor idle)
        self._idle = 0  # members whose consumer holds an event
        self._ready_since: float | None = None  # since when a step waits only on idle members
        self._stepping = False  # a step is running
        self._pass_thread: threading.Thread | None = None  # running while it has the turn
        self._driver: threading.Thread | None = None  # a thread running every step (``drive``)

    def members_now(self) -> int:
        """How many generations run through this batcher now."""
        return self._members

    def run(self, events: Iterator[T]) -> Iterator[T]:
        """``events`` (one generation's iterator) produced as a member: its passes are batched
        with the other members'. Closing this iterator early closes ``events`` (which frees
        its caches) and leaves."""
        self._join()
        try:
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    return
                self._change(-1)  # idle while the consumer holds the event
                try:
                    yield event
                finally:
                    self._change(+1)
        finally:
            try:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
            finally:
                self._leave()

    def submit(self, run: Run, payload: Any, group: Hashable | None = None, order: int = 0) -> Any:
        """Wait for ``payload``'s pass (batched with other members' jobs of ``group``) and
        return its result; an error in the pass is raised here."""
        job = Job(run, payload, group, order)
        with self._cond:
            self._jobs.append(job)
            self._active -= 1
            self._cond.notify_all()
        while True:
            with self._cond:
                try:
                    while not (job.done or self._may_step("member")):
                        self._cond.wait()
                except BaseException:  # e.g. KeyboardInterrupt: stop waiting, active again
                    if job in self._jobs:
                        self._jobs.remove(job)
                        self._active += 1
                    elif not job.done:  # its pass is running: its result is dropped
                        job.abandoned = True
                        self._active += 1
                    raise
                if job.done:
                    break
                jobs = self._take()
            self._run(jobs)  # alone: the step runs in this member's own thread
        if job.error is not None:
            raise job.error
        return job.result

    def _pass_loop(self) -> None:
        """The pass thread's loop: one step whenever one may start, while it has the turn."""
        while True:
            with self._cond:
                while not self._may_step("pass"):
                    if self._turn() != "pass":
                        self._pass_thread = None
                        return
                    self._cond.wait(self._linger_left())
                jobs = self._take()
            self._run(jobs)

    def drive(self, start: Callable[[], None], done: Callable[[], bool]) -> None:
        """Call ``start()`` (which starts generations in other threads), then run every step
        in the calling thread until ``done()`` (checked at least every 50 ms): a caller that
        would only wait for those generations lends them its own thread
        (``Ladder.iter_many``: the main thread ran passes fastest, docs/batching.md). Lone
        members and the pass thread step again afterwards; Ctrl-C in a step run here is
        raised here too."""
        with self._cond:
            if self._driver is not None:
                raise RuntimeError("the batcher already has a driving thread")
            self._driver = threading.current_thread()
            self._cond.notify_all()  # a pass thread stands down
        try:
            start()
            while True:
                with self._cond:
                    while not self._may_step("driver"):
                        if done():
                            return
                        left = self._linger_left()
                        self._cond.wait(0.05 if left is None else min(0.05, left))
                    jobs = self._take()
                self._run(jobs)
                for job in jobs:  # Ctrl-C in a pass run here: its members have it, and so do we
                    if isinstance(job.error, KeyboardInterrupt):
                        raise job.error
        finally:
            with self._cond:
                self._driver = None
                self._wake_pass_thread()
                self._cond.notify_all()

    def _turn(self) -> str:
        """Which thread runs the steps now (THE rule; called holding the lock): the driving
        thread while one drives, else the pass thread while members are several, else the lone
        member's own."""
        if self._driver is not None:
            return "driver"
        return "pass" if self._members > 1 else "member"

    def _wake_pass_thread(self) -> None:
        """Start the pass thread if the turn is its and it is not running (holding the lock)."""
        if self._turn() == "pass" and self._pass_thread is None:
            self._pass_thread = threading.Thread(
                target=self._pass_loop, name="csdraft-passes", daemon=True
            )
            self._pass_thread.start()

    def _take(self) -> list[Job]:
        """Start a step: its jobs (called holding the lock, when ``_may_step``)."""
        self._stepping = True
        self._ready_since = None
        return self._pick()

    def _run(self, jobs: list[Job]) -> None:
        """Run a step's ``jobs`` (an error goes to the jobs it hits) and wake their members."""
        self._step(jobs)
        with self._cond:
            for done in jobs:
                done.done = True
                if not done.abandoned:
                    self._active += 1
            self._stepping = False
            self._cond.notify_all()

    def _may_step(self, by: str) -> bool:
        """Whether a step may start now in the thread of role ``by`` (``_turn``): it has the
        turn, passes wait, no member runs engine code, no step is running, and no member is
        idle or the step has waited ``linger_s`` for them (holding the lock)."""
        if self._turn() != by:
            return False
        if not (self._jobs and self._active == 0 and not self._stepping):
            self._ready_since = None
            return False
        if self._idle == 0:
            return True
        now = time.monotonic()
        if self._ready_since is None:
            self._ready_since = now
        return now - self._ready_since >= self.linger_s

    def _linger_left(self) -> float | None:
        """Seconds until a step waiting on idle members starts anyway (None: none waits)."""
        if self._ready_since is None:
            return None
        return max(0.0, self._ready_since + self.linger_s - time.monotonic())

    def _join(self) -> None:
        with self._cond:
            self._members += 1
            self._active += 1
            self._wake_pass_thread()

    def _leave(self) -> None:
        with self._cond:
            self._members -= 1
            self._active -= 1
            self._cond.notify_all()

    def _change(self, delta: int) -> None:
        """-1: the member turns idle (its consumer holds an event); +1: active again."""
        with self._cond:
            self._active += delta
            self._idle -= delta
            if delta < 0:
                self._cond.notify_all()

    def _pick(self) -> list[Job]:
        """This step's jobs (taken from the waiting ones): every job that runs alone, and one
        shared group: the highest ``order`` waiting, the largest among equals. Members waiting
        on other groups wait a step more while those released go on to need those groups too,
        so the generations fall into step and later passes take more rows for the one fixed
        cost of a pass (``pooled`` orders a ladder's cheapest models first, the target last:
        its passes, the costliest, gather every generation that reaches them)."""
        groups: dict[Hashable, list[Job]] = {}
        for job in self._jobs:
            if job.group is not None:
                groups.setdefault(job.group, []).append(job)
        chosen = max(groups.values(), key=lambda g: (g[0].order, len(g)), default=[])
        take = [job for job in self._jobs if job.group is None or job in chosen]
        self._jobs = [job for job in self._jobs if job not in take]
        return take

    def _step(self, jobs: list[Job]) -> None:
        """Run every job: those of one group in one pass, the rest one by one."""
        groups: dict[Hashable, list[Job]] = {}
        passes = []
        for job in jobs:
            if job.group is None:
                passes.append([job])
            elif job.group in groups:
                groups[job.group].append(job)
            else:
                groups[job.group] = [job]
                passes.append(groups[job.group])
        for together in passes:
            try:
                results = together[0].run([job.payload for job in together])
                for job, result in zip(together, results, strict=True):
                    job.result = result
            except BaseException as e:  # handed to every member waiting on the pass
                for job in together:
                    job.error = e
        c = self.counts
        c.steps, c.passes, c.jobs = c.steps + 1, c.passes + len(passes), c.jobs + len(jobs)
        c.widest = max(c.widest, *(len(p) for p in passes))
        for together in passes:
            if together[0].group is not None:
                tally = c.shared.setdefault(together[0].order, [0, 0])
                tally[0], tally[1] = tally[0] + 1, tally[1] + len(together)
