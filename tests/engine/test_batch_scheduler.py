"""The scheduler alone (``csdraft.engine.batch``), on fake passes: a step waits for every
running generation, runs one shared group (the highest order, the largest among equals) in one
pass and every job that runs alone by itself; an error in a pass reaches every generation that
waited on it; generations leave cleanly."""

from __future__ import annotations

import random
import threading
import time

import pytest

from csdraft.engine.batch import BatchCounts, Batcher


def run_members(batcher: Batcher, plans: list[list[tuple[str | None, int]]], fail: str = ""):
    """Each plan is one generation: the (group, order) of each pass it waits for. All start
    their first pass at once. Returns each generation's results (or its error) and the passes
    run, in order, as (group, width)."""
    passes: list[tuple[str | None, int]] = []
    go = threading.Event()

    def make_run(group: str | None):
        def run(payloads: list) -> list:
            passes.append((group, len(payloads)))
            if group == fail:
                raise ValueError(f"pass {group} failed")
            return [f"{group}:{p}" for p in payloads]

        return run

    arrived = threading.Semaphore(0)

    def events(i: int, plan: list[tuple[str | None, int]]):
        yield "start"
        arrived.release()
        go.wait()  # active (engine code running) until every generation is here
        for k, (group, order) in enumerate(plan):
            yield batcher.submit(make_run(group), (i, k), group, order)

    out: list = [None] * len(plans)

    def worker(i: int) -> None:
        try:
            out[i] = list(batcher.run(events(i, plans[i])))[1:]
        except ValueError as e:
            out[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for _ in plans:
        arrived.acquire(timeout=30)
    go.set()
    for t in threads:
        t.join(timeout=30)
    assert batcher._members == 0 and batcher._active == 0 and not batcher._jobs
    return out, passes


def test_drafters_first_then_one_target_pass_for_all():
    batcher = Batcher()
    plans = [[("d", 1), ("t", 0)], [("t", 0)], [("d", 1), ("d", 1), ("t", 0)]]
    out, passes = run_members(batcher, plans)
    assert passes == [("d", 2), ("d", 1), ("t", 3)]
    assert out[0] == ["d:(0, 0)", "t:(0, 1)"] and out[1] == ["t:(1, 0)"]
    assert batcher.counts.steps == 3 and batcher.counts.jobs == 6 and batcher.counts.widest == 3
    assert batcher.counts.shared == {1: [2, 3], 0: [1, 3]}


def test_jobs_that_run_alone_run_in_every_step_one_by_one():
    batcher = Batcher()
    out, passes = run_members(batcher, [[(None, 0), ("t", 0)], [(None, 0), ("t", 0)]])
    assert passes == [(None, 1), (None, 1), ("t", 2)]
    assert out == [["None:(0, 0)", "t:(0, 1)"], ["None:(1, 0)", "t:(1, 1)"]]


def test_an_error_in_a_pass_reaches_every_generation_in_it_and_the_rest_go_on():
    batcher = Batcher()
    out, passes = run_members(batcher, [[("x", 0)], [("x", 0)], [("y", 1), ("z", 0)]], fail="x")
    assert isinstance(out[0], ValueError) and isinstance(out[1], ValueError)
    assert out[2] == ["y:(2, 0)", "z:(2, 1)"]


@pytest.mark.parametrize("width", [1, 5])
def test_a_lone_generation_steps_in_its_own_thread_several_in_the_one_pass_thread(width):
    """Alone, no hand-off: every pass in the generation's own thread. Several: their shared
    steps run in one pass thread (torch's OpenMP keeps a worker pool per calling thread), which
    ends when one generation is left."""
    batcher = Batcher()
    seen: list[threading.Thread] = []

    def run(payloads: list) -> list:
        seen.append(threading.current_thread())
        return payloads

    go = threading.Barrier(width)

    def events():
        go.wait()  # every member has joined
        for i in range(3):
            yield batcher.submit(run, i, "t")

    def member() -> None:
        assert list(batcher.run(events())) == [0, 1, 2]

    before = set(threading.enumerate())
    if width == 1:
        member()
        assert seen == [threading.current_thread()] * 3
    else:
        threads = [threading.Thread(target=member) for _ in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        passers = set(seen) - set(threads)
        assert len(passers) == 1 and not passers & before  # the first step: all five waiting
        passers.pop().join(10)
    assert set(threading.enumerate()) <= before  # nothing left running


def test_generations_joining_and_leaving_at_random_never_stall():
    """The step passes back and forth between a lone generation's own thread and the pass
    thread as others join and leave (1, 2, 1, 3...): every pass runs once, none is stranded."""
    batcher = Batcher()
    rng = random.Random(7)
    starts = [rng.uniform(0, 0.05) for _ in range(12)]
    lengths = [rng.randint(1, 25) for _ in range(12)]
    out: list = [None] * 12

    def member(i: int) -> None:
        time.sleep(starts[i])
        events = (batcher.submit(lambda ps: ps, (i, k), "t") for k in range(lengths[i]))
        out[i] = list(batcher.run(events))

    threads = [threading.Thread(target=member, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert out == [[(i, k) for k in range(lengths[i])] for i in range(12)]
    assert batcher.counts.jobs == sum(lengths)
    assert batcher._members == 0 and batcher._active == 0 and not batcher._jobs


def test_a_driving_thread_runs_every_pass_and_hands_back_when_done():
    """``drive``: the caller's thread runs every step, a lone generation's included, until
    done; a generation still running afterwards steps in its own thread again."""
    batcher = Batcher()
    seen: list[threading.Thread] = []

    def run(payloads: list) -> list:
        seen.append(threading.current_thread())
        return payloads

    def member(i: int, n: int, out: list) -> None:
        events = (batcher.submit(run, (i, k), "t") for k in range(n))
        out[i] = list(batcher.run(events))

    out: list = [None] * 4
    threads = [threading.Thread(target=member, args=(i, 3 + 4 * i, out)) for i in range(3)]
    batcher.drive(
        lambda: [t.start() for t in threads], lambda: not any(t.is_alive() for t in threads)
    )
    assert set(seen) == {threading.current_thread()} and len(seen) == batcher.counts.passes
    assert out[:3] == [[(i, k) for k in range(3 + 4 * i)] for i in range(3)]
    late = threading.Thread(target=member, args=(3, 2, out))
    late.start()
    late.join(10)
    assert out[3] == [(3, 0), (3, 1)] and seen[-1] is late


def consume_slowly(batcher: Batcher, consumer_s: list[float], passes: int) -> tuple[list, list]:
    """Members that each wait for ``passes`` shared passes, their consumer taking
    ``consumer_s[i]`` seconds over every event (serve's hand-off to its event loop, slowed
    down). Returns each pass's width and each member's finishing time."""
    widths: list[int] = []
    finished: list[float] = [0.0] * len(consumer_s)
    go = threading.Barrier(len(consumer_s))

    def run(payloads: list) -> list:
        widths.append(len(payloads))
        return payloads

    def events(i: int):
        go.wait()
        for k in range(passes):
            yield batcher.submit(run, (i, k), "t")

    def member(i: int) -> None:
        for _ in batcher.run(events(i)):
            time.sleep(consumer_s[i])
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(consumer_s))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert batcher._members == 0 and batcher._active == 0 and batcher._idle == 0
    return widths, finished


def test_a_step_waits_for_members_whose_consumer_holds_an_event():
    """A member is idle while its consumer holds an event; a step that could start waits for
    it (up to ``linger_s``), so every pass takes every member's job."""
    widths, _ = consume_slowly(Batcher(linger_s=5.0), [0.01, 0.0, 0.02], passes=6)
    assert widths == [3] * 6


def test_a_consumer_slower_than_the_linger_does_not_hold_the_others_back():
    widths, finished = consume_slowly(Batcher(linger_s=0.01), [0.5, 0.0, 0.0], passes=4)
    assert sorted(widths)[0] < 3 and sum(widths) == 12
    assert max(finished[1:]) < finished[0] - 0.5  # the quick two were done well before


def test_counts_add_up_over_stretches_of_scheduling():
    a = BatchCounts(3, 4, 9, 3, {0: [2, 6], 1: [1, 2]})
    b = BatchCounts(1, 2, 2, 1, {1: [2, 2]})
    assert a + b == BatchCounts(4, 6, 11, 3, {0: [2, 6], 1: [3, 4]})
    assert a.shared == {0: [2, 6], 1: [1, 2]}  # the operands are left as they were
