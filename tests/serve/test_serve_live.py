"""A real uvicorn server over a tiny ladder: concurrent requests each get exactly their solo
output, a client that goes away cancels its generation and frees its slot, the official
``openai`` client works, and /metrics counts what happened."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import PROMPT, app_client, chat, completion, live_server, sse_events

from csdraft.trace import Finish

pytestmark = pytest.mark.usefixtures("one_thread")


class Slow:
    """The ladder with each event of a generation delayed; counts generations begun, closed
    (their caches freed) and finished."""

    def __init__(self, ladder, delay: float) -> None:
        self.ladder, self.delay = ladder, delay
        self.begun = self.closed = self.finished = 0

    def __getattr__(self, name: str):
        return getattr(self.ladder, name)

    def stream(self, *args, **kwargs):
        self.begun += 1
        try:
            for event in self.ladder.stream(*args, **kwargs):
                time.sleep(self.delay)
                self.finished += isinstance(event, Finish)
                yield event
        finally:
            self.closed += 1


def until(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def metric(client, name: str, **labels) -> float:
    """A sample's value from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrent_requests_each_get_their_solo_output(ladder, concurrency):
    """Queued (one slot) or generating together (their passes batched), each is exact."""
    requests = [
        ("/v1/completions", completion(max_tokens=16)),
        ("/v1/completions", completion(max_tokens=16, temperature=0.9, seed=7, stream=True)),
        ("/v1/chat/completions", chat(max_tokens=16, temperature=0.7, top_k=10, seed=2)),
        ("/v1/chat/completions", chat("w5 w6 w7", max_tokens=16, stream=True)),
    ]
    solo = []
    for _, body in requests:
        settings = {k: body[k] for k in ("temperature", "top_k", "seed") if k in body}
        prompt = body.get("prompt") or body["messages"][0]["content"]
        raw = "prompt" in body
        solo.append(ladder.generate(prompt, 16, raw=raw, **settings).token_ids)
    results: list = [None] * len(requests)
    with live_server(ladder, concurrency=concurrency) as (url, _):

        def call(i: int) -> None:
            path, body = requests[i]
            r = httpx.post(url + path, json=body, timeout=60)
            assert r.status_code == 200, r.text
            results[i] = sse_events(r.text)[-2] if body.get("stream") else r.json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [r["csdraft"]["token_ids"] for r in results] == solo


def test_a_client_gone_mid_stream_cancels_its_generation(ladder):
    slow = Slow(ladder, 0.03)
    with live_server(slow, max_queue=0) as (url, app):
        gate = app.state.server.gate
        with (
            httpx.Client(base_url=url, timeout=30) as c,
            c.stream("POST", "/v1/completions", json=completion(max_tokens=200, stream=True)) as r,
        ):
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line.startswith("data:"))
        until(lambda: slow.closed == 1 and gate.admitted == 0)
        assert slow.finished == 0  # stopped before the end, not run out
        # the slot is free (max_queue 0: a busy ladder would refuse with 429)
        r = httpx.post(url + "/v1/completions", json=completion(), timeout=30)
        assert r.status_code == 200
        assert r.json()["csdraft"]["token_ids"] == ladder.generate(PROMPT, 12, raw=True).token_ids
        with httpx.Client(base_url=url) as c:
            assert metric(c, "csdraft_cancelled_total") == 1
            assert (
                metric(c, "csdraft_requests_total", endpoint="completions", status="cancelled") == 1
            )


def test_a_client_gone_before_a_whole_answer_cancels_it(ladder):
    slow = Slow(ladder, 0.03)
    with live_server(slow) as (url, app):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json=completion(max_tokens=200), timeout=0.5)
        until(lambda: slow.closed == 1 and app.state.server.gate.admitted == 0)
        assert slow.finished == 0


def test_a_request_waiting_for_the_ladder_is_dropped_when_its_client_goes(ladder):
    slow = Slow(ladder, 0.03)
    with live_server(slow) as (url, app):
        gate = app.state.server.gate
        first = threading.Thread(
            target=httpx.post,
            args=(url + "/v1/completions",),
            kwargs={"json": completion(max_tokens=40), "timeout": 60},
        )
        first.start()
        until(lambda: gate.running == 1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json=completion(), timeout=0.3)
        until(lambda: gate.admitted == 1)  # the waiting one left; the first still runs
        first.join(60)
        assert slow.begun == 1


def test_metrics_count_what_happened(ladder):
    with app_client(ladder) as c:
        before = {
            "tokens": metric(c, "csdraft_generated_tokens_total"),
            "forwards": metric(c, "csdraft_target_forwards_total"),
            "proposed": metric(c, "csdraft_proposed_tokens_total", rung="tiny-target"),
            "ok": metric(c, "csdraft_requests_total", endpoint="completions", status="200"),
            "bad": metric(c, "csdraft_requests_total", endpoint="completions", status="400"),
        }
        out = c.post("/v1/completions", json=completion()).json()
        c.post("/v1/completions", json=completion(n=3))
        record = out["csdraft"]
        assert metric(c, "csdraft_generated_tokens_total") == before["tokens"] + len(
            record["token_ids"]
        )
        assert (
            metric(c, "csdraft_target_forwards_total")
            == before["forwards"] + record["target_forwards"]
        )
        proposed = record["reviews"]["tiny-target"]["proposed"]
        assert proposed > 0
        assert (
            metric(c, "csdraft_proposed_tokens_total", rung="tiny-target")
            == before["proposed"] + proposed
        )
        assert (
            metric(c, "csdraft_requests_total", endpoint="completions", status="200")
            == before["ok"] + 1
        )
        assert (
            metric(c, "csdraft_requests_total", endpoint="completions", status="400")
            == before["bad"] + 1
        )
        assert metric(c, "csdraft_request_seconds_count") >= 1
        assert metric(c, "csdraft_queue_length") == 0
        assert metric(c, "process_resident_memory_bytes") > 0


def test_the_openai_client(ladder):
    openai = pytest.importorskip("openai")
    with live_server(ladder, api_key="k") as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        settings = {"max_tokens": 12, "temperature": 0.8, "seed": 4}
        messages = [{"role": "user", "content": PROMPT}]
        ref = ladder.generate(PROMPT, 12, temperature=0.8, seed=4)
        whole = client.chat.completions.create(model="tiny", messages=messages, **settings)
        assert whole.model_extra["csdraft"]["token_ids"] == ref.token_ids
        assert whole.choices[0].message.content == ref.text
        assert whole.usage.completion_tokens == len(ref.token_ids)
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **settings,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
        assert chunks[-1].usage.completion_tokens == len(ref.token_ids)
        text = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=12, extra_body={"top_k": 5}
        )
        assert text.choices[0].text == ladder.generate(PROMPT, 12, raw=True, top_k=5).text
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            client.chat.completions.create(model="tiny", messages=messages, logprobs=True)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="no", max_retries=0).models.list()
