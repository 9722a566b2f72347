#!/usr/bin/env bash
# lm-eval (the lm-evaluation-harness) against a running `csdraft serve`, on GSM8K with the
# prompt and answer format of `csdraft bench gsm8k` (zero-shot, the chat template, '#### N'),
# from a local GSM8K test file (no hub access needed).
#
#   scripts/lmeval_gsm8k.sh DATA.jsonl [URL] [LIMIT] [MODEL]
#   e.g. scripts/lmeval_gsm8k.sh ../shared/datasets/gsm8k/test.jsonl http://127.0.0.1:8000 20
#
# LM_EVAL: the lm_eval command (default: lm_eval on PATH); MAX_TOKENS: the budget (512). The task's YAML and lm-eval's
# samples and results go to OUT (default: ./lmeval-gsm8k).
set -euo pipefail
DATA=$(realpath "${1:?usage: lmeval_gsm8k.sh DATA.jsonl [URL] [LIMIT] [MODEL]}")
URL=${2:-http://127.0.0.1:8000}
LIMIT=${3:-20}
MODEL=${4:-$(curl -s "$URL/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')}
OUT=${OUT:-lmeval-gsm8k}
MAX_TOKENS=${MAX_TOKENS:-512}
mkdir -p "$OUT/task"
cat > "$OUT/task/gsm8k_csdraft.yaml" <<YAML
task: gsm8k_csdraft
dataset_path: json
dataset_kwargs:
  data_files:
    test: $DATA
output_type: generate_until
test_split: test
num_fewshot: 0
doc_to_text: "Solve the following math problem step by step. At the end, write the final answer as '#### <number>'.\n\nQuestion: {{question.strip()}}"
doc_to_target: "{{answer.split('#### ')[-1]}}"
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: $MAX_TOKENS
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    regexes_to_ignore: [",", "\\\\\$", "\\\\.\$"]
filter_list:
  - name: "hashes-or-boxed"
    filter:
      - function: "regex"
        regex_pattern: "(?:####|\\\\\\\\boxed\\\\{)\\\\s*\\\\\$?(-?[0-9][0-9.,]*)"
        group_select: -1
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[\$0-9.,]{2,})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 1.0
YAML
"${LM_EVAL:-lm_eval}" --model local-chat-completions \
  --model_args "model=$MODEL,base_url=$URL/v1/chat/completions,num_concurrent=1,max_retries=3,tokenized_requests=False,timeout=3600" \
  --include_path "$OUT/task" --tasks gsm8k_csdraft --apply_chat_template \
  --limit "$LIMIT" --log_samples --output_path "$OUT"
