"""Responses on a tiny ladder: token ids and text equal ``Ladder.generate`` for the same
settings (greedy, seeded sampling, stop strings, a request's own ladder settings), streamed
as the OpenAI API streams them."""

from __future__ import annotations

import pytest
from serve_helpers import PROMPT, app_client, chat, completion, sse_events

from csdraft.spec import deferral_of

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(ladder):
    with app_client(ladder) as c:
        yield c


def post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(client, path: str, body: dict) -> list:
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r.text)


def test_completion_equals_generate_greedy(client, ladder):
    out = post(client, "/v1/completions", completion(max_tokens=12))
    ref = ladder.generate(PROMPT, 12, raw=True)
    assert out["csdraft"]["token_ids"] == ref.token_ids
    assert out["choices"][0]["text"] == ref.text
    assert out["object"] == "text_completion" and out["model"] == "tiny"
    assert out["choices"][0]["finish_reason"] == {"length": "length"}.get(ref.finish, "stop")
    assert out["usage"] == {
        "prompt_tokens": len(ref.prompt_ids),
        "completion_tokens": len(ref.token_ids),
        "total_tokens": len(ref.prompt_ids) + len(ref.token_ids),
    }
    record = out["csdraft"]
    assert record["lossless"] is True and record["new_tokens"] == len(ref.token_ids)
    assert record["tokens_per_target_forward"] == round(ref.stats.tokens_per_forward, 4)
    assert set(record["reviews"]) >= {"tiny-target"}
    assert record["reviews"]["tiny-target"]["proposed"] == ref.stats.proposed[0]
    assert record["target_acceptance_by_position"]
    assert record["prompt_s"] >= 0 and record["decode_s"] >= 0


def test_chat_goes_through_the_chat_template_as_generate_does(client, ladder):
    out = post(client, "/v1/chat/completions", chat(max_tokens=10))
    ref = ladder.generate(PROMPT, 10)  # not raw: the chat template
    assert ref.prompt_ids != ladder.encode(PROMPT, raw=True)
    assert out["csdraft"]["token_ids"] == ref.token_ids
    assert out["object"] == "chat.completion"
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == ref.text
    assert out["usage"]["prompt_tokens"] == len(ref.prompt_ids)


def test_text_parts_and_several_messages(client, ladder):
    messages = [
        {"role": "system", "content": "w9"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "w1 "}, {"type": "text", "text": "w2"}],
        },
    ]
    out = post(client, "/v1/chat/completions", {"model": "tiny", "messages": messages})
    from csdraft.api import chat_ids

    plain = [{"role": "system", "content": "w9"}, {"role": "user", "content": "w1 w2"}]
    ref = ladder.generate(chat_ids(ladder.tokenizer, plain))
    assert out["csdraft"]["token_ids"] == ref.token_ids


@pytest.mark.parametrize("seed", [3, 11])
def test_seeded_sampling_equals_generate(client, ladder, seed):
    settings = {"temperature": 0.9, "top_p": 0.95, "top_k": 20, "seed": seed}
    out = post(client, "/v1/completions", completion(max_tokens=12, **settings))
    ref = ladder.generate(PROMPT, 12, raw=True, **settings)
    assert out["csdraft"]["token_ids"] == ref.token_ids
    again = streamed(client, "/v1/completions", completion(max_tokens=12, **settings))
    assert again[-2]["csdraft"]["token_ids"] == ref.token_ids


def test_the_seed_matters(client):
    outs = {
        tuple(
            post(client, "/v1/completions", completion(temperature=1.0, seed=s))["csdraft"][
                "token_ids"
            ]
        )
        for s in range(4)
    }
    assert len(outs) > 1


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/completions", completion(max_tokens=14)),
        ("/v1/chat/completions", chat(max_tokens=14)),
        ("/v1/chat/completions", chat(max_tokens=14, temperature=0.8, seed=5)),
    ],
)
def test_stream_gives_the_same_text_and_ids_as_openai_streams(client, path, body):
    whole = post(client, path, body)
    events = streamed(client, path, body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    kind = "chat.completion.chunk" if "chat" in path else "text_completion"
    assert {c["object"] for c in chunks} == {kind}
    assert len({c["id"] for c in chunks}) == 1
    assert all(len(c["choices"]) == 1 for c in chunks)  # no usage chunk unless asked
    if "chat" in path:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks)
    whole_text = whole["choices"][0]["message" if "chat" in path else "text"]
    whole_text = whole_text["content"] if isinstance(whole_text, dict) else whole_text
    assert text == whole_text
    finish = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish[:-1] == [None] * (len(chunks) - 1)
    assert finish[-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["csdraft"]["token_ids"] == whole["csdraft"]["token_ids"]


def test_include_usage_adds_a_final_usage_chunk(client):
    body = completion(stream_options={"include_usage": True})
    events = streamed(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(
        events[-3]["csdraft"]["token_ids"]
    )
    assert (
        usage["usage"]["total_tokens"]
        == usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    )


def test_stop_strings_cut_the_text_and_end_generation(client, ladder):
    free = ladder.generate(PROMPT, 14, raw=True)
    words = free.text.split()
    stop = words[3]  # a word the greedy output reaches
    ref = ladder.generate(PROMPT, 14, raw=True, stop=[stop])
    assert len(ref.token_ids) < len(free.token_ids) and ref.finish == "stop"
    for body in (
        completion(max_tokens=14, stop=stop),
        completion(max_tokens=14, stop=["zz", stop]),
    ):
        out = post(client, "/v1/completions", body)
        assert out["csdraft"]["token_ids"] == ref.token_ids  # as generate: up to the stop
        text = out["choices"][0]["text"]
        assert text == ref.text[: ref.text.index(stop)]  # as OpenAI: the stop string cut off
        assert stop not in text
        assert out["choices"][0]["finish_reason"] == "stop"
        events = streamed(client, "/v1/completions", body)
        assert "".join(c["choices"][0]["text"] for c in events[:-1]) == text


def test_max_completion_tokens_and_length_finish(client, ladder):
    out = post(client, "/v1/chat/completions", chat(max_completion_tokens=3))
    assert len(out["csdraft"]["token_ids"]) <= 3
    assert out["csdraft"]["token_ids"] == ladder.generate(PROMPT, 3).token_ids


def test_a_requests_own_ladder_settings(client, ladder):
    settings = {"k_matrix": [[2, 1], [0, 4]], "min_confidence": 0.2}
    out = post(client, "/v1/completions", completion(**settings))
    spec = ladder.spec.with_settings(k_matrix=[[2, 1], [0, 4]], min_confidence=0.2)
    ref = ladder.generate(PROMPT, 12, raw=True, spec=spec)
    assert out["csdraft"]["token_ids"] == ref.token_ids
    assert out["csdraft"]["lossless"] is True
    assert out["csdraft"]["target_forwards"] == ref.stats.target_forwards


def test_a_deferral_rule_is_lossy_and_labelled(client, ladder):
    out = post(client, "/v1/completions", completion(deferral="opt", alpha=0.3))
    assert out["csdraft"]["lossless"] is False
    assert out["csdraft"]["lossy"].startswith("LOSSY: opt alpha=0.3")
    assert list(out["csdraft"]["deferral"]) == ["tiny-target"]
    spec = ladder.spec.with_settings(deferral=deferral_of("opt", 0.3, "test"))
    assert out["csdraft"]["token_ids"] == ladder.generate(PROMPT, 12, raw=True, spec=spec).token_ids


def test_prompt_as_token_ids(client, ladder):
    ids = ladder.encode(PROMPT, raw=True)
    out = post(client, "/v1/completions", completion(prompt=ids))
    assert out["csdraft"]["token_ids"] == ladder.generate(ids, 12).token_ids


def test_reset_prefix_cache_forgets_the_stored_prompts(client, ladder):
    """``POST /reset_prefix_cache``: a prompt sent again finds its rows stored until the reset,
    and none after it; its output is the same every time."""
    body = completion(prompt=PROMPT + " w3 w3", max_tokens=4)

    def hits() -> int:  # the tiny target is not batch-invariant: its drafter's store is used
        return sum(store.counts.hits for store in ladder.prefix_stores.values())

    first = post(client, "/v1/completions", body)
    before = hits()
    again = post(client, "/v1/completions", body)
    assert hits() > before
    reset = client.post("/reset_prefix_cache")
    assert reset.status_code == 200 and reset.json() == {"status": "ok"}
    before = hits()
    after = post(client, "/v1/completions", body)
    assert hits() == before
    assert first["csdraft"]["token_ids"] == again["csdraft"]["token_ids"]
    assert after["csdraft"]["token_ids"] == first["csdraft"]["token_ids"]
