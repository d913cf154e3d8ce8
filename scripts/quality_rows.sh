#!/usr/bin/env bash
# Rows of docs/quality.md's table on SmolLM2-135M-Instruct (f32): each row's prune (128 × 256
# windows of WikiText-2 valid, seed 0, cpu) and its perplexity on the first 40 windows of 256
# tokens of WikiText-2 test, one line per row: its settings, the perplexity, λs, the overall
# sparsity and the prune's wall time.
#
#   bash scripts/quality_rows.sh BINARY MODEL OUT "ROW" ["ROW" …]
#
# ROW is the prune's own flags, e.g. "--method wanda --sparsity 0.7 --top-up neuroal".
# With TASKS=FILE.jsonl[,…] (and ZS_LIMIT=N, the first N examples of each file; default all) each
# row also gets `neuroal zeroshot`'s accuracy on the pruned model, one "task acc" per file.
set -euo pipefail
BIN="$1"; MODEL="$2"; OUT="$3"; shift 3
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
for row in "$@"; do
  name=$(echo "$row" | tr -s ' -' '_' | sed 's/^_//')
  start=$(date +%s.%N)
  # A row the prune refuses prints its one-line error and the next row runs.
  # shellcheck disable=SC2086
  if ! "$BIN" prune --model "$MODEL" --calib ../shared/data/wikitext-2/valid.txt --nsamples 128 --seqlen 256 \
    --device cpu --out "$OUT/$name" --force $row > "$OUT/$name.log" 2>&1; then
    echo "$row | $(tail -1 "$OUT/$name.log")"
    continue
  fi
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  ppl=$("$BIN" eval --model "$OUT/$name" --text ../shared/data/wikitext-2/test.txt --seqlen 256 --max-windows 40 \
    --device cpu --json 2>/dev/null | python3 -c "import json,sys; print(round(json.load(sys.stdin)['ppl'], 2))")
  zs=""
  if [ -n "${TASKS:-}" ]; then
    "$BIN" zeroshot --model "$OUT/$name" --tasks "$TASKS" ${ZS_LIMIT:+--limit "$ZS_LIMIT"} --device cpu --json \
      > "$OUT/$name.zeroshot.json" 2>/dev/null
    zs=$(python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['tasks']; print(' | '.join(f'{k} {v[\"acc\"]:.3f}' for k, v in t.items()))" \
      "$OUT/$name.zeroshot.json")
  fi
  python3 - "$OUT/$name/report.json" "$row" "$ppl" "$secs" "$zs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["topup"]
zs = f" | {sys.argv[5]}" if sys.argv[5] else ""
print(f"{sys.argv[2]} | ppl {sys.argv[3]} | λ {t.get('lambda_block')} / {t.get('lambda_row')} | sparsity {r['sparsity']['overall']:.4f} | {float(sys.argv[4]):.0f} s{zs}", flush=True)
PY
  rm -rf "${OUT:?}/$name"
done
