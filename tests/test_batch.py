"""Many generations at once (``csdraft.engine.batch``, ``csdraft.models.pooled``): each request's
output is exactly its output alone whatever shares its passes, greedy and sampled, with requests
of different prompt lengths joining and leaving at random steps; a request closed early frees
its caches at once and the others go on exactly. Greedy outputs also equal the int8 target's own
greedy decoding. A sampled request's text is a function of its seed alone, so its distribution
is the single-sequence one (tests/engine/test_sampling.py proves that one exact); the wrong
variant that shares one random stream across requests fails here, and so does the variant that
lets a sampled request share a batch-dependent drafter's passes (``pooled.shares_passes``
switched off)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_ladder import make_tiny_ladder

import csdraft.api
import csdraft.models.pooled
from csdraft.api import Ladder
from csdraft.engine.batch import BatchCounts
from csdraft.engine.proposer import common_prefix
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder
from csdraft.models import TransformersScorer
from csdraft.models.lean import LeanDecoder
from csdraft.models.prefixes import PrefixStore
from csdraft.trace import Commit, Review

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = 1


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Ladder:
    """A tiny int8 ladder: the batch-invariant int8 target, an int8 (fbgemm dynamic, not
    batch-invariant) drafter and Max-Gram, loaded once."""
    root = tmp_path_factory.mktemp("batch")
    config = make_tiny_ladder(root, drafters=1, maxgram=True)
    data = yaml.safe_load(config.read_text())
    data["tiny"]["dtype"] = "int8"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSDRAFT_HOME", str(root / "home"))
        mp.setenv("CSDRAFT_CONFIG", str(root / "user.yaml"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        loaded = Ladder.load(get_ladder("tiny", config), progress=False)
    assert loaded.target.batch_invariant
    assert not loaded.models["tiny-d1"].batch_invariant
    return loaded


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    n: int
    temperature: float = 0.0
    seed: int = 0
    start: int = 0
    """The scheduler step it joins at (or when nothing else runs)."""
    cancel: int | None = None
    """Close its stream after this many events (None: run to the end)."""


SOLO: dict[tuple, list[int]] = {}


def alone(ladder: Ladder, r: Request) -> list[int]:
    """The request's output generated alone."""
    key = (r.prompt, r.n, r.temperature, r.seed)
    if key not in SOLO:
        out = ladder.generate(list(r.prompt), r.n, temperature=r.temperature, seed=r.seed)
        SOLO[key] = out.token_ids
    return SOLO[key]


@torch.inference_mode()
def own_greedy(ladder: Ladder, prompt: tuple[int, ...], n: int) -> list[int]:
    """The int8 target alone, one token per pass, up to eos."""
    scorer = TransformersScorer(ladder.target.model, "alone")
    seq, out = np.asarray(prompt, dtype=np.int64), []
    while len(out) < n:
        out.append(int(scorer.score(seq, len(seq))[-1].argmax()))
        seq = np.append(seq, out[-1])
        if out[-1] == EOS:
            break
    return out


def together(
    ladder: Ladder,
    requests: list[Request],
    in_step: bool = False,
    events: list[list] | None = None,
) -> list[list[int]]:
    """Run every request in its own thread through ``ladder.stream``: the committed tokens of
    each (up to where it was closed, for a cancelled one). ``in_step``: all join before any
    pass runs (each waits after its first event, which comes before any pass). ``events``:
    one list per request, filled with its events."""
    results: list[list[int] | None] = [None] * len(requests)
    barrier = threading.Barrier(len(requests)) if in_step else None
    running = [False] * len(requests)
    errors: list[BaseException] = []

    def worker(i: int, r: Request) -> None:
        try:
            others = running[:i] + running[i + 1 :]
            while i and ladder.batcher.counts.steps < r.start and any(others):
                time.sleep(0.0005)
                others = running[:i] + running[i + 1 :]
            running[i] = True
            stream = ladder.stream(list(r.prompt), r.n, temperature=r.temperature, seed=r.seed)
            tokens: list[int] = []
            for k, event in enumerate(stream):
                if events is not None:
                    events[i].append(event)
                if k == 0 and barrier is not None:
                    barrier.wait(timeout=60)
                if isinstance(event, Commit):
                    tokens += event.tokens
                if r.cancel is not None and k >= r.cancel:
                    stream.close()
                    break
            results[i] = tokens
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
        finally:
            running[i] = False

    threads = [threading.Thread(target=worker, args=(i, r)) for i, r in enumerate(requests)]
    running[0] = True  # the first starts at once; the rest wait for their step
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert ladder.batcher._members == 0
    return results  # type: ignore[return-value]


SAMPLED = [Request(tuple(range(4 + i, 10 + 3 * i)), 16, temperature=1.0, seed=i) for i in range(4)]
GREEDY = [Request(tuple(range(30 + i, 38 + 2 * i)), 16) for i in range(2)]


@pytest.fixture
def batch_dependent_drafter(ladder, monkeypatch) -> list[int]:
    """The ladder's drafter (not batch-invariant) made noticeably batch-dependent: in a pass
    with other sequences, each sequence's logits get a bump of up to 3 that depends on how many
    rows the others fed; alone, its logits are untouched. Returns a one-item count of the
    passes it changed."""
    drafter = ladder.models["tiny-d1"]
    assert not drafter.batch_invariant and drafter.model is not ladder.target.model
    embed = drafter.model.model.embed_tokens
    real = LeanDecoder.many
    changed = [0]

    def many(self, jobs, masks=None):
        logits = real(self, jobs, masks)
        if self.embed is not embed or len(jobs) < 2:
            return logits
        changed[0] += 1
        rows = [ids.shape[1] for ids, _, _ in jobs]
        ids = torch.arange(logits[0].shape[-1], dtype=logits[0].dtype)
        return [x + 3 * torch.cos(ids * (sum(rows) - n)) for x, n in zip(logits, rows, strict=True)]

    monkeypatch.setattr(LeanDecoder, "many", many)
    return changed


requests = st.builds(
    Request,
    prompt=st.lists(st.integers(3, 62), min_size=1, max_size=40).map(tuple),
    n=st.integers(1, 14),
    temperature=st.sampled_from([0.0, 0.0, 0.8, 1.3]),
    seed=st.integers(0, 3),
    start=st.integers(0, 12),
    cancel=st.one_of(st.none(), st.none(), st.integers(1, 4)),
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(requests, min_size=2, max_size=5))
def test_every_request_outputs_exactly_what_it_outputs_alone(
    ladder, batch_dependent_drafter, batch
):
    """With the drafter batch-dependent, so that the sharing rule matters (switched off, this
    fails: fbgemm's own drift is too small on tiny models to flip a draw)."""
    got = together(ladder, batch)
    for r, tokens in zip(batch, got, strict=True):
        want = alone(ladder, r)
        if r.cancel is None:
            assert tokens == want
        else:  # closed early: exact as far as it went
            assert tokens == want[: len(tokens)]
        if r.temperature == 0:
            assert want == own_greedy(ladder, r.prompt, r.n)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(requests, min_size=2, max_size=5))
def test_every_request_outputs_exactly_what_it_outputs_alone_with_drafts_below(
    ladder, batch_dependent_drafter, monkeypatch, batch
):
    """The same with ``drafts_below: 2``: greedy requests go undrafted whenever two or more
    run (and draft again when one is left, catching the drafter's cache up)."""
    monkeypatch.setattr(ladder, "spec", ladder.spec.replace(drafts_below=2))
    test_every_request_outputs_exactly_what_it_outputs_alone.hypothesis.inner_test(
        ladder, batch_dependent_drafter, batch
    )


def test_passes_are_shared_across_requests(ladder):
    ladder.batcher.counts = BatchCounts()
    batch = [Request(tuple(range(3 + i, 20 + 3 * i)), 12) for i in range(4)]
    got = together(ladder, batch, in_step=True)
    assert got == [alone(ladder, r) for r in batch]
    counts = ladder.batcher.counts
    assert counts.widest >= 2 and counts.passes < counts.jobs
    target_passes, target_jobs = counts.shared[0]  # the batch-invariant int8 target's
    assert target_passes < target_jobs


def target_blocks(events: list) -> list[list[int]]:
    """The tokens the target reviewed in each of its passes, in order."""
    return [e.proposed for e in events if isinstance(e, Review) and e.reviewer == 0]


def test_under_load_greedy_requests_go_undrafted_and_stay_exact(ladder, monkeypatch):
    """``drafts_below: 2``: while two or more run, a greedy request's target blocks go
    undrafted (one token a pass, batched), its output still exactly its output alone and the
    target's own; sampled requests beside it review the very drafts they review alone (their
    text must not depend on what runs beside them); alone, a greedy request drafts."""
    monkeypatch.setattr(ladder, "spec", ladder.spec.replace(drafts_below=2))
    batch = [*GREEDY, *SAMPLED[:2]]
    seen: list[list] = [[] for _ in batch]
    got = together(ladder, batch, in_step=True, events=seen)
    for r, tokens, events in zip(batch, got, seen, strict=True):
        assert tokens == alone(ladder, r)
        solo = target_blocks(ladder.generate(list(r.prompt), r.n, **vars_of(r)).events)
        if r.temperature == 0:
            assert tokens == own_greedy(ladder, r.prompt, r.n)
            assert target_blocks(events)[0] == [] and solo[0] != []  # all four ran at first
        else:
            assert target_blocks(events) == solo


def test_without_drafts_below_greedy_requests_draft_under_load(ladder):
    seen: list[list] = [[] for _ in GREEDY]
    together(ladder, GREEDY, in_step=True, events=seen)
    assert all(target_blocks(events)[0] != [] for events in seen)


def vars_of(r: Request) -> dict:
    """A request's sampling settings, as ``generate`` takes them."""
    return {"temperature": r.temperature, "seed": r.seed}


def test_sharing_one_random_stream_across_requests_fails(ladder, monkeypatch):
    """The wrong variant: every cascade draws from one generator. Outputs then depend on what
    ran beside them, and this harness sees it."""
    batch = [Request(tuple(range(5, 9 + i)), 20, temperature=1.3, seed=i) for i in range(4)]
    want = [alone(ladder, r) for r in batch]
    shared = torch.Generator()
    monkeypatch.setattr(csdraft.engine.cascade.torch, "Generator", lambda: shared)
    assert together(ladder, batch, in_step=True) != want


def test_sampled_requests_never_share_a_batch_dependent_drafters_passes(
    ladder, batch_dependent_drafter
):
    """``pooled.shares_passes``: a drafter that is not batch-invariant shares passes only for
    greedy lossless requests (their output is the target's whatever the drafts); a sampled
    request's drafter q enters its acceptance test, so its drafter passes run alone."""
    batch = SAMPLED + GREEDY
    want = [alone(ladder, r) for r in batch]
    ladder.batcher.counts = BatchCounts()
    assert together(ladder, batch, in_step=True) == want
    assert batch_dependent_drafter[0] > 0  # the greedy requests' shared drafter passes changed
    passes, jobs = ladder.batcher.counts.shared[1]
    assert passes < jobs


def test_sharing_a_batch_dependent_drafters_passes_when_sampling_fails(
    ladder, batch_dependent_drafter, monkeypatch
):
    """The wrong variant: the rule switched off (every session shares passes). The sampled
    requests' drafter distributions then depend on what shares their passes, and so do their
    outputs: this is what guards the rule."""
    want = [alone(ladder, r) for r in SAMPLED]
    monkeypatch.setattr(csdraft.models.pooled, "shares_passes", lambda *_: True)
    got = together(ladder, SAMPLED, in_step=True)
    assert batch_dependent_drafter[0] > 0
    assert got != want


def test_a_request_closed_early_frees_its_caches_and_the_others_go_on(ladder, monkeypatch):
    built = {}
    real = csdraft.api.build_cascade

    def record(*args, **kwargs):
        cascade = real(*args, **kwargs)
        built[threading.get_ident()] = cascade
        return cascade

    monkeypatch.setattr(csdraft.api, "build_cascade", record)
    freed = []
    batch = [Request(tuple(range(3, 12 + 5 * i)), 14, temperature=0.8 * (i % 2)) for i in range(3)]
    closing = threading.Event()

    def worker_closes() -> None:
        stream = ladder.stream(list(batch[1].prompt), batch[1].n, seed=0)
        for k, _ in enumerate(stream):
            if k == 2:
                break
        stream.close()
        scorers = [r.scorer.scorer for r in built[threading.get_ident()].rungs if r.neural]
        freed.append(all(s.cache is None for s in scorers) and len(scorers) == 2)
        closing.set()

    others = [Request(batch[0].prompt, 14), Request(batch[2].prompt, 14, 0.8, 3)]
    thread = threading.Thread(target=worker_closes)
    thread.start()
    got = together(ladder, others)
    thread.join()
    assert closing.is_set() and freed == [True]
    assert got == [alone(ladder, r) for r in others]


def test_generate_many_keeps_input_order_and_per_request_settings(ladder):
    prompts = [[5, 6, 7], {"prompt": [8, 9], "temperature": 0.8, "seed": 2}, [10] * 30]
    results = ladder.generate_many(prompts, 10, concurrency=3)
    assert [r.token_ids for r in results] == [
        alone(ladder, Request((5, 6, 7), 10)),
        alone(ladder, Request((8, 9), 10, 0.8, 2)),
        alone(ladder, Request((10,) * 30, 10)),
    ]
    with pytest.raises(UsageError, match="unknown request setting"):
        ladder.generate_many([{"prompt": [5], "tempreature": 1}])
    with pytest.raises(UsageError, match="temperature"):
        ladder.generate_many([[5], {"prompt": [6], "temperature": -1}])
    with pytest.raises(UsageError, match="temperature"):  # at the call, before any result
        ladder.iter_many([[5], {"prompt": [6], "temperature": -1}])


def _counting_streams(ladder, monkeypatch) -> list[int]:
    """Count the requests ``ladder`` starts (its ``stream`` calls)."""
    import functools

    started: list[int] = []
    stream = ladder.stream

    @functools.wraps(stream)
    def counted(*args, **kwargs):
        started.append(1)
        return stream(*args, **kwargs)

    monkeypatch.setattr(ladder, "stream", counted)
    return started


def test_iter_many_yields_in_order_and_closing_it_stops_the_rest(ladder, monkeypatch):
    started = _counting_streams(ladder, monkeypatch)
    prompts = [[5 + i % 20, 6, 7] for i in range(40)]
    results = ladder.iter_many(prompts, 12, concurrency=2)
    first = next(results)
    results.close()  # the rest are cancelled (not started) or stopped at their next token
    assert len(started) < len(prompts)
    assert first.token_ids == alone(ladder, Request((5, 6, 7), 12))
    assert ladder.batcher._members == 0 and ladder.batcher._driver is None
    assert ladder.generate_many(prompts[1:3], 12, concurrency=2)[1].token_ids == alone(
        ladder, Request((7, 6, 7), 12)
    )


def test_ctrl_c_in_a_driven_pass_stops_generate_many(ladder, monkeypatch):
    """Ctrl-C lands in the main thread, which runs the passes of ``generate_many``: it stops
    the whole call (the requests not started never run), not only the requests whose pass it
    hit, and the ladder is left ready for the next call."""
    started = _counting_streams(ladder, monkeypatch)
    ragged = csdraft.models.pooled._ragged
    calls = []

    def interrupted(payloads):
        if threading.current_thread() is threading.main_thread():  # where signals land
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
        return ragged(payloads)

    monkeypatch.setattr(csdraft.models.pooled, "_ragged", interrupted)
    prompts = [[5 + i, 6, 7, 8] for i in range(10)]
    with pytest.raises(KeyboardInterrupt):
        ladder.generate_many(prompts, 16, concurrency=3)
    assert len(calls) == 4 and len(started) < len(prompts)
    assert ladder.batcher._members == 0 and ladder.batcher._driver is None
    monkeypatch.setattr(csdraft.models.pooled, "_ragged", ragged)
    assert ladder.generate_many(prompts[:2], 10)[0].token_ids == alone(
        ladder, Request((5, 6, 7, 8), 10)
    )


@contextmanager
def no_prefix_store(ladder: Ladder) -> Iterator[None]:
    """Every model's prompt-prefix store off (nothing stored, nothing found)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ladder.prefix_stores:
            mp.setattr(ladder.models[name], "prefixes", PrefixStore(max_bytes=0))
        yield


tails = st.tuples(
    st.integers(0, 30),  # how much of the shared start it keeps
    st.lists(st.integers(3, 62), max_size=8),  # its own tokens after that
    st.sampled_from([0.0, 0.0, 0.9]),
    st.integers(0, 2),
)


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.integers(3, 62), min_size=4, max_size=30), st.lists(tails, min_size=2, max_size=4)
)
def test_prompts_sharing_a_start_copy_its_rows_and_output_the_same(ladder, start, tails):
    """``prefixes``: a request whose prompt starts like an earlier one's copies that start's
    cache rows (the int8 target's always; the drafter's for greedy requests) and outputs
    exactly what it outputs with nothing stored, one after another and several at once."""
    batch = [
        Request(tuple(start[:cut] + own) or (5,), 10, temperature=t, seed=s)
        for cut, own, t, s in tails
    ]
    with no_prefix_store(ladder):
        want = [
            ladder.generate(list(r.prompt), r.n, temperature=r.temperature, seed=r.seed).token_ids
            for r in batch
        ]
    ladder.forget_prompts()
    target = ladder.target.prefixes
    rows = target.counts.rows
    got = [
        ladder.generate(list(r.prompt), r.n, temperature=r.temperature, seed=r.seed).token_ids
        for r in batch
    ]
    assert got == want
    shared = max(
        common_prefix(np.asarray(a.prompt), np.asarray(b.prompt))
        for i, a in enumerate(batch)
        for b in batch[:i]
    )
    if shared > 1:  # copied wherever a start was shared (and maybe more: a first pass's
        assert target.counts.rows > rows  # rows hold its first draft's tokens too)
    assert together(ladder, batch) == want  # the store warm, requests at once


def test_a_request_done_in_one_pass_still_offers_its_prompt(ladder):
    """A session offers its rows at its second sync, or when it is reset after one pass (found
    by the property test above: a request whose first block ended it offered nothing)."""
    ladder.forget_prompts()
    store = ladder.target.prefixes
    prompt = list(range(7, 27))
    stored = store.counts.stored
    ladder.generate(prompt, 1)  # one target pass, no second sync
    assert store.counts.stored == stored + 1
    rows = store.counts.rows
    ladder.generate(prompt[:15] + [3, 4], 4)
    assert store.counts.rows - rows == 15


@torch.inference_mode()
def spoil(store: PrefixStore) -> None:
    """Replace every stored row with noise."""
    for _, rows in store._entries:
        for keys, values in rows:
            keys.copy_(torch.randn_like(keys) * 4)
            values.copy_(torch.randn_like(values) * 4)


def test_copied_rows_are_used(ladder):
    """The wrong variant: the target's stored rows spoiled. A request that starts like the
    stored prompt then outputs something else, so the test above sees what it copies."""
    prompt = list(range(3, 40))
    with no_prefix_store(ladder):
        want = [ladder.generate(prompt[:n] + [7], 12).token_ids for n in (20, 30, 36)]
    ladder.forget_prompts()
    ladder.generate(prompt, 4)
    spoil(ladder.target.prefixes)
    assert [ladder.generate(prompt[:n] + [7], 12).token_ids for n in (20, 30, 36)] != want
    ladder.forget_prompts()


def test_a_sampled_request_never_copies_a_drafters_rows(ladder):
    """``pooled.shares_passes`` also guards the store: the drafter (not batch-invariant) copies
    rows only for greedy requests, so a sampled request's text does not depend on what the
    drafter computed for earlier prompts, even when those rows are spoiled."""
    prompt = list(range(10, 45))
    sampled = [Request(tuple(prompt[:n] + [9]), 14, temperature=1.0, seed=n) for n in (25, 33)]
    with no_prefix_store(ladder):
        want = [alone(ladder, r) for r in sampled]
    ladder.forget_prompts()
    drafter = ladder.models["tiny-d1"].prefixes
    ladder.generate(prompt, 4)  # greedy: stores the drafter's rows
    assert drafter._entries
    spoil(drafter)
    hits = drafter.counts.hits
    assert [
        ladder.generate(list(r.prompt), r.n, temperature=1.0, seed=r.seed).token_ids
        for r in sampled
    ] == want
    assert drafter.counts.hits == hits
    ladder.forget_prompts()
