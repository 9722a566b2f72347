"""The ``csdraft serve`` command: a one-line message without the serve extra or with a bad
ladder, and a real process that loads in the background, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import completion
from tiny_ladder import make_tiny_ladder

from csdraft import cli


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["csdraft", *args])
    cli._state["debug"] = False
    capsys.readouterr()  # drop what the test's setup printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code or 0, capsys.readouterr().err


def test_without_the_extra_it_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    code, err = run_cli(monkeypatch, capsys, "serve")
    assert code == 2
    assert (
        err.strip() == "csdraft: error: csdraft serve needs fastapi: pip install 'csdraft[serve]'"
    )


def test_a_bad_ladder_fails_before_listening(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "none.yaml"))
    code, err = run_cli(monkeypatch, capsys, "serve", "-l", "no-such-ladder")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-such-ladder" in err


def test_a_port_in_use_is_one_line(monkeypatch, capsys, tmp_path):
    config = make_tiny_ladder(tmp_path / "ladder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = run_cli(monkeypatch, capsys, "serve", "-c", str(config), "--port", port)
    assert code == 1 and err.startswith(f"csdraft: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(err.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_and_exits_0_on_sigterm(tmp_path):
    config = make_tiny_ladder(tmp_path / "ladder")
    port = free_port()
    env = {
        **os.environ,
        "CSDRAFT_HOME": str(tmp_path / "home"),
        "CSDRAFT_CONFIG": str(tmp_path / "user.yaml"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    command = [sys.executable, "-m", "csdraft.cli", "serve", "-c", str(config), "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        r = httpx.post(url + "/v1/completions", json=completion(), timeout=60)
        assert r.status_code == 200 and r.json()["csdraft"]["token_ids"]
        body = completion(max_tokens=200, stream=True)
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            next(lines)
            proc.send_signal(signal.SIGTERM)  # a generation in flight: cancelled, or done
            rest = [line.removeprefix("data: ") for line in lines]
        assert rest[-1] == "[DONE]"
        if "error" in rest[-2]:
            assert json.loads(rest[-2])["error"]["code"] == "shutting_down"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "ladder 'tiny'" in err
