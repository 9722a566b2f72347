"""Every refusal on a tiny ladder: an OpenAI-style error body naming the field, with the right
status (400 bad input, 401 key, 404 model or route, 413 body size, 429 queue full, 503 loading),
and never a traceback or a local path."""

from __future__ import annotations

import threading
import time

import pytest
from serve_helpers import TestClient, app_client, chat, completion, wait_ready

from csdraft.errors import CsdraftError
from csdraft.serve import app as app_module
from csdraft.serve.app import create_app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(ladder):
    with app_client(ladder) as c:
        yield c


def refused(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text and "/tmp" not in response.text
    return error


BAD_FIELDS = [
    (completion(n=2), "n"),
    (completion(logprobs=2), "logprobs"),
    (chat(logprobs=True), "logprobs"),
    (chat(top_logprobs=3), "top_logprobs"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (chat(tool_choice="auto"), "tool_choice"),
    (chat(response_format={"type": "json_object"}), "response_format"),
    (chat(logit_bias={"5": 10}), "logit_bias"),
    (chat(presence_penalty=0.5), "presence_penalty"),
    (completion(echo=True), "echo"),
    (completion(best_of=3), "best_of"),
    (completion(colour="red"), "colour"),
    (completion(max_tokens=0), "max_tokens"),
    (completion(max_tokens="12"), "max_tokens"),
    (completion(max_tokens=2.5), "max_tokens"),
    (chat(max_completion_tokens=-1), "max_completion_tokens"),
    (completion(max_tokens=4, max_completion_tokens=4), "max_completion_tokens"),
    (completion(temperature=-0.5), "temperature"),
    (completion(temperature="hot"), "temperature"),
    (completion(top_p=1.5), "top_p"),
    (completion(top_k=-1), "top_k"),
    (completion(seed=-3), "seed"),
    (completion(seed="x"), "seed"),
    (completion(seed=2**64), "seed"),
    (completion(stop=""), "stop"),
    (completion(stop=["a", 3]), "stop"),
    (completion(stream="yes"), "stream"),
    (completion(stream_options={"include_usage": True}), "stream_options"),
    (completion(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
    (completion(k_matrix=[[1, 2, 3]]), "k_matrix"),
    (completion(k_matrix="nonsense"), "k_matrix"),
    (completion(min_confidence=2), "min_confidence"),
    (completion(min_confidence=[0.1, 0.2, 0.3]), "min_confidence"),
    (completion(deferral="bogus", alpha=0.1), "deferral"),
    (completion(deferral="opt"), "deferral"),
    (completion(alpha=0.1), "deferral"),
    (completion(prompt=None), "prompt"),
    (completion(prompt=["a", "b"]), "prompt"),
    (completion(prompt=[1, 10**9]), "prompt"),
    (completion(prompt="   "), "prompt"),
    (completion(prompt="w1 " * 250, max_tokens=16), "prompt"),  # over the 256-token context
    (chat(max_tokens=250), "messages"),
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": [{"content": "w1"}]}, "messages[0]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content",
    ),
    ({"messages": [{"role": "user", "content": "w1"}]}, "model"),
]


@pytest.mark.parametrize("body,param", BAD_FIELDS, ids=[p for _, p in BAD_FIELDS])
def test_bad_fields_get_a_400_naming_them(client, body, param):
    path = (
        "/v1/chat/completions" if "messages" in body or "prompt" not in body else "/v1/completions"
    )
    error = refused(client.post(path, json=body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ")


def test_the_context_error_says_how_long(client):
    error = refused(
        client.post("/v1/completions", json=completion(prompt="w1 " * 250)), 400, "prompt"
    )
    assert error["code"] == "context_length_exceeded" and "256" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b"\xff\xfe", b"", b'"text"'],
    ids=["syntax", "list", "bytes", "empty", "str"],
)
def test_a_body_that_is_no_json_object_is_a_400(client, raw):
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    refused(r, 400)


def test_an_unknown_model_is_a_404(client):
    error = refused(client.post("/v1/completions", json=completion(model="gpt-4")), 404, "model")
    assert error["code"] == "model_not_found" and "tiny" in error["message"]


def test_an_unknown_route_is_a_404_in_the_same_shape(client):
    refused(client.get("/v1/nothing"), 404)
    assert client.get("/v1/chat/completions").status_code == 405


def test_a_body_over_the_limit_is_a_413(client, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_BODY", 1000)
    refused(client.post("/v1/completions", json=completion(prompt="w1 " * 400)), 413)


def test_the_api_key(ladder):
    with app_client(ladder, api_key="sesame") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            error = refused(c.post("/v1/completions", json=completion(), headers=headers), 401)
            assert error["code"] == "invalid_api_key"
        refused(c.get("/v1/models"), 401)
        refused(c.post("/reset_prefix_cache"), 401)
        ok = c.post(
            "/v1/completions", json=completion(), headers={"Authorization": "Bearer sesame"}
        )
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # probes need no key
        assert c.get("/metrics").status_code == 200


def test_a_full_queue_is_a_429_with_retry_after(ladder):
    with app_client(ladder, max_queue=0) as c:
        gate = c.app.state.server.gate
        assert gate.admit()  # the one slot taken, as by a running generation
        try:
            r = c.post("/v1/completions", json=completion())
            refused(r, 429)
            assert r.headers["retry-after"] == "1"
        finally:
            gate.leave()
        assert c.post("/v1/completions", json=completion()).status_code == 200
        assert gate.admitted == 0


def test_503_while_loading_then_200(ladder):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return ladder

    with TestClient(create_app(slow_load)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        refused(c.post("/v1/completions", json=completion()), 503)
        refused(c.get("/v1/models"), 503)
        release.set()
        wait_ready(c)
        assert c.get("/health").json() == {"status": "ok", "model": "tiny"}
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_a_failed_load_is_reported_in_one_line(ladder):
    reported = []

    def broken():
        raise CsdraftError("ladder 'x': no such model /secret/path")

    with TestClient(create_app(broken, on_load_error=reported.append)) as c:
        deadline = time.monotonic() + 5
        while c.get("/health").status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.get("/health").json()["status"] == "failed"
        error = refused(c.post("/v1/completions", json=completion()), 503)
        assert "/secret" not in error["message"]
    assert reported == ["ladder 'x': no such model /secret/path"]
