#!/usr/bin/env bash
# The issue-8 measurement on a lent GPU, in one go. Prepare `.bin/` and `.gl/` here first with
# scripts/device_prepare.sh, then run this script there with `.bin` and `.gl` carried. Each run
# prints its name, exit code and seconds, then bench's table (or eval's and prune's last
# lines); the runs' full output is collected in $OUT/runs.log (or /tmp/runs.log).
set -uo pipefail
out="${OUT:-/tmp}"
logs=/tmp/neuroal-bench-logs
mkdir -p "$logs"
# Carried compressed (see device_prepare.sh); xz, or Python's lzma where xz is missing.
for f in .bin/*.xz .bin/wt2-llama/*.xz; do
  [ -f "$f" ] || continue
  if command -v xz >/dev/null; then
    xz -d -f "$f"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f" && rm "$f"
  fi
done
chmod +x .bin/neuroal* 2>/dev/null
if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg}"
mkdir -p "$XDG_RUNTIME_DIR"
# `neuroal tune` keeps its kernels in $XDG_CACHE_HOME: the tune step writes into $tuned, which
# only %tuned steps read; every other step runs with an empty cache.
tuned="$logs/tuned"
none="$logs/no-cache"
rm -rf "$tuned" "$none"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

# The device tool stops a command at 600 s and returns nothing of a killed pipeline, so every
# run gets a timeout, and runs are skipped once BUDGET seconds (default 540) are spent; the runs
# are ordered by what the issue needs most.
budget=${BUDGET:-540}
began=$(date +%s)
run() {
  local name=$1; shift
  local left=$(( budget - ($(date +%s) - began) ))
  if [ "$left" -lt 20 ]; then
    echo "$name: skipped, the time budget is spent"
    return
  fi
  local cap=$(( left < ${RUN_CAP:-240} ? left : ${RUN_CAP:-240} ))
  local start=$(date +%s%N)
  # The driver's view of the card's memory, beside the pools' peak that bench reports.
  local smi=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$logs/$name.smi" 2>/dev/null &
    smi=$!
  fi
  # An autotune build writes its tuning decisions (each kernel's time per matrix-product shape)
  # through a cubecl.toml in the working directory, for scripts/autotune_summary.py.
  local decisions=""
  case $name in *autotune*)
    decisions="$logs/$name.decisions.jsonl"
    rm -f "$decisions"
    printf '[autotune.decisions]\nfile = "%s"\n' "$decisions" >cubecl.toml ;;
  esac
  timeout -k 5 "$cap" env "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  rm -f cubecl.toml
  [ -n "$smi" ] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null
  [ "$rc" = 124 ] && echo "$name: stopped after ${cap} s"
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-28s rc=%d %4d.%01d s  ' "$name" "$rc" $(( ms / 1000 )) $(( ms % 1000 / 100 ))
  [ -s "$logs/$name.smi" ] && printf 'nvidia-smi peak %s MiB' "$(sort -n "$logs/$name.smi" | tail -n 1)"
  echo
  # bench's table (a header and one row per device), or the error.
  grep -v "^wrote a random" "$logs/$name.log" | tail -n 4
  # Only 8 files come back from $OUT: every run's whole output goes into one.
  { echo "===== $name (rc=$rc)"; cat "$logs/$name.log"; } >>"$out/runs.log"
  if [ -n "$decisions" ] && [ -s "$decisions" ]; then
    python3 scripts/autotune_summary.py "$decisions" 0 2>/dev/null | grep -E "m=[0-9]{4,}" | head -n 12
    { echo "===== $name: autotune decisions"; python3 scripts/autotune_summary.py "$decisions" 8; } >>"$out/runs.log"
  fi
}

# Correctness on the real card first: wt2-llama's perplexity with the SPIR-V build (82.3059 in
# f32 on the CPU at seqlen 256; f16 within 0.3%). Then the issue's 7B-shaped NeuroAL prune, its
# per-stage trace and the 0.84 B forward, then the other builds, then the rest (see `steps`).
# A dry run elsewhere can shrink the shapes (and skip wt2, slow on an emulator), e.g.
#   WT2=0 FORWARD="tiny --blocks 2" NEUROAL="tiny --blocks 2" PROFILE_FORWARD="tiny --blocks 2" \
#   PROFILE_NEUROAL="tiny --blocks 2" SEQLEN=64 NSAMPLES=4 bash scripts/device_bench.sh
forward=${FORWARD:-llama-0.8b --blocks 16}
neuroal=${NEUROAL:-llama2-7b --blocks 8}
seqlen=${SEQLEN:-512}
nsamples=${NSAMPLES:-64}
wt2=0
[ "${WT2:-1}" = 1 ] && [ -f .bin/wt2-llama/model.safetensors ] && wt2=1
# Each synthetic shape is written once (bench --save, into $models) and every step that times it
# measures that folder (bench --model): a 7B-shaped stack of 8 blocks is 3.6 GB, and about ten
# steps time it.
models=/tmp/neuroal-synthetic-models
rm -rf "$models"
mkdir -p "$models"
model_of() { # build, then the shape's words (e.g. llama2-7b --blocks 8); prints the folder
  local build=$1; shift
  local dir
  dir="$models/$(printf '%s' "$*" | tr -c 'A-Za-z0-9.-' '_')"
  if [ ! -d "$dir" ]; then
    local start=$(date +%s%N)
    if ".bin/$build" bench --synthetic "$@" --save "$dir" >>"$logs/synthetic.log" 2>&1; then
      echo "synthetic $*: written in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
    else
      echo "synthetic $*: not written: $(tail -n 1 "$logs/synthetic.log")" >&2
    fi
  fi
  printf '%s\n' "$dir"
}
eval_wt2() { # build dtype
  [ "$wt2" = 1 ] && [ -x ".bin/$1" ] && run "$1-wt2-eval-$2$tag" ".bin/$1" eval --model .bin/wt2-llama --text .bin/test.txt --seqlen 256 --device gpu --dtype "$2"
}
# Every build's perplexity on the repository's own tiny LLaMA (no carried model needed): the
# builds must agree with each other on the card (fusion and autotune change the kernels).
eval_tiny() { # build dtype
  [ -x ".bin/$1" ] && run "$1-tiny-eval-$2$tag" ".bin/$1" eval --model assets/tiny-llama --text assets/sample.txt --device gpu --dtype "$2"
}
prune_7b() { # build dtype
  [ -x ".bin/$1" ] && run "$1-neuroal-$2$tag" ".bin/$1" bench --model "$(model_of "$1" $neuroal)" --devices gpu --seqlen "$seqlen" --prune-sparsity 0.5 --nsamples "$nsamples" --search-nsamples 8 --search-batch "$batch" --dtype "$2"
}
forward() { # build dtype
  [ -x ".bin/$1" ] && run "$1-forward-$2$tag" ".bin/$1" bench --model "$(model_of "$1" $forward)" --devices gpu --seqlen "$seqlen" --batch 4 --dtype "$2"
}
# Every nameable matrix-product kernel (and burn's choice) on the products of both cases: the
# 7B search's 4096 tokens through q/k/v/o, gate/up and down, the 0.84 B forward's 2048 through
# its linears and head (k and v: 2048 → 256); then, if the cap leaves time, the products that
# one launch per shared input would make (q, k and v together; gate and up together), to see
# whether fusing them would pay. Milliseconds per kernel, where a prune takes tens of seconds.
# The ranking (scripts/matmul_summary.py) goes to the output and runs.log; a later step's
# %fastest names its winner.
matmul() { # build dtype
  [ -x ".bin/$1" ] || return
  # At most MATMUL_CAP seconds (default 150): rows print as they are timed, and the ranking
  # takes the products that every kernel was tried on.
  RUN_CAP=${MATMUL_CAP:-150} run "$1-matmul-$2$tag" ".bin/$1" bench --matmul "${MATMUL:-4096x4096x4096,4096x4096x11008,4096x11008x4096,2048x2048x2048,2048x2048x5632,2048x5632x2048,2048x2048x32000,2048x2048x256,4096x4096x12288,4096x4096x22016,2048x2048x2560,2048x2048x11264}" --devices gpu --dtype "$2" --iters 10 --json
  cp "$logs/$1-matmul-$2$tag.log" "$logs/matmul-last.jsonl"
  python3 scripts/matmul_summary.py "$logs/matmul-last.jsonl" --top 15 | tee -a "$out/runs.log"
}
# The separate attention kernels against each flash kernel on both cases' attentions (the
# 0.84 B forward's heads of 64, the 7B's of 128, wt2-llama's of 32): whether flash-2 launches
# and wins at heads of 128, and which flash kernel is fastest where.
attention() { # build dtype
  [ -x ".bin/$1" ] && run "$1-attention-$2$tag" ".bin/$1" bench --attention "${ATTENTION:-4x32x512x64,8x32x512x128,8x8x256x32}" --devices gpu --dtype "$2" --iters 10 && grep -v '^{' "$logs/$1-attention-$2$tag.log" | tail -n 20
}
# The row pruning NeuroAL's search runs once per linear and candidate (`prune_rows.wgsl`, both
# tie orders; the final prune's with its mask; the three shaders it fuses) on the 7B case's
# weights: what its candidates' pruning (2.0 s of the traced search) is made of; with each
# variant of the selection (digit walk, first-digit histogram copies; `tune` keeps the
# fastest).
prune_rows() { # build dtype
  [ -x ".bin/$1" ] || return
  run "$1-prunerows-$2$tag" ".bin/$1" bench --prune-rows "${PRUNE_ROWS:-4096x4096,11008x4096,4096x11008}" --devices gpu --dtype "$2" --iters 10 || return
  # Per selection variant and path: ms summed over the shapes, scores and tie orders, and the
  # largest error (0 where every variant prunes as the default's three shaders do).
  awk 'NF == 9 && $7 ~ /^[0-9.]+$/ { key = $4 " " $5 " " $6; ms[key] += $7; if ($9 + 0 > err[key]) err[key] = $9 + 0 }
       END { for (k in ms) printf "%-32s %10.3f ms  max err %g\n", k, ms[k], err[k] }' "$logs/$1-prunerows-$2$tag.log" | sort | tee -a "$out/runs.log"
  grep -c declined "$logs/$1-prunerows-$2$tag.log" | sed 's/^/declined rows: /'
}
# `neuroal tune` on both cases' linears and attentions (the 7B search's 8 windows of 512
# tokens, the 0.84 B forward's 4), as a user would run it once on a new card: its own time, and
# the kernels it keeps (for the %tuned steps).
tune() { # build dtype
  [ -x ".bin/$1" ] || return
  run "$1-tune-$2$tag" XDG_CACHE_HOME="$tuned" ".bin/$1" tune --synthetic "${neuroal%% *}" --tokens "${TUNE_NEUROAL_TOKENS:-4096}" --seqlen "$seqlen" --dtype "$2"
  run "$1-tune-forward-$2$tag" XDG_CACHE_HOME="$tuned" ".bin/$1" tune --synthetic "${forward%% *}" --tokens "${TUNE_FORWARD_TOKENS:-2048}" --seqlen "$seqlen" --dtype "$2"
  cat "$tuned"/neuroal/kernels-*.txt 2>/dev/null | tee -a "$out/runs.log"
}
# NeuroAL's λ in f16 on the card (0.10 / 0.10 on the CPU) and the run's peak memory.
wt2_lambda() {
  [ "$wt2" = 1 ] || return
  run "neuroal-wt2-neuroal-f16" .bin/neuroal prune --model .bin/wt2-llama --calib .bin/valid.txt --seqlen 256 --sparsity 0.7 --top-up neuroal --device gpu --dtype f16 --out /tmp/wt2-70-f16 --force
  cp /tmp/wt2-70-f16/report.json "$out/wt2-70-f16-report.json" 2>/dev/null
  grep -oE '"(lambda_[a-z]*|[a-z_]*peak_[a-z_]*)": [0-9.]*' /tmp/wt2-70-f16/report.json 2>/dev/null | tr '\n' ' '; echo
}
# The authors' code on this card (PyTorch CUDA, f16, the whole model on the GPU as their main.py
# loads it) and neuroal's prune command on the same 7B-shaped checkpoint and the same windows:
# `prune` draws them from WikiText-2's validation text (the checkpoint's own 384-id tokenizer)
# and its report.json hands them to scripts/time_authors_code.py. The issue's goal is twice their
# speed on the same kind of card; their 21.2 s was an H100's. Needs AUTHORS= at prepare time.
# PyTorch's name for a step's dtype.
torch_dtype() { if [ "$1" = f32 ]; then echo float32; else echo float16; fi; }
authors() { # dtype
  if [ ! -d .bin/authors ] || [ ! -f .bin/valid.txt ]; then echo "authors-$1: skipped, prepared without AUTHORS="; return; fi
  local model
  model=$(model_of neuroal $neuroal)
  rm -rf /tmp/authors-ours
  run "neuroal-prune-$1" .bin/neuroal prune --model "$model" --calib .bin/valid.txt --seqlen "$seqlen" --nsamples "$nsamples" --search-nsamples 8 --sparsity 0.5 --top-up neuroal --device gpu --dtype "$1" --out /tmp/authors-ours --force
  grep -oE '"(topup_s|prune_s|total_s|lambda_block|lambda_row|peak_[a-z_]*)": [0-9.]*' /tmp/authors-ours/report.json 2>/dev/null | tr '\n' ' '; echo
  [ -f /tmp/authors-ours/report.json ] || return
  run "authors-$1" python3 scripts/time_authors_code.py .bin/authors "$model" .bin/valid.txt /tmp/authors-ours/report.json --dtype "$(torch_dtype "$1")" --device "${AUTHORS_DEVICE:-cuda}"
  # neuroal's candidates' scores beside theirs (the same windows: the same λ, or a tie).
  python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["topup"]; print(json.dumps({"neuroal": {k: t[k] for k in ("lambda_block", "lambda_row")}, "block_scores": [s for _, s in t["block_scores"]], "row_scores": [s for _, s in t["row_scores"]]}))' /tmp/authors-ours/report.json | tee -a "$out/runs.log"
  rm -rf /tmp/authors-ours
}
# PyTorch's forward (transformers, the step's dtype) on the 0.84 B checkpoint that `forward`
# times, with bench's batch, ids and read-back: the issue's 137,216 tokens/s in f16 was an H100's.
torch_forward() { # dtype
  run "torch-forward-$1" python3 scripts/time_torch_forward.py "$(model_of neuroal $forward)" --batch 4 --seqlen "$seqlen" --dtype "$(torch_dtype "$1")" --device "${AUTHORS_DEVICE:-cuda}"
}
# Where the GPU time goes: cubecl's per-kernel timings (each kernel waited for) on smaller runs
# of the same shapes, summed per kernel kind by scripts/kernel_times.sh.
profiled() { # name, then the bench arguments
  local name=$1; shift
  rm -f "/tmp/$name.cubecl.log"
  run "$name" CUBECL_DEBUG_LOG="/tmp/$name.cubecl.log" CUBECL_DEBUG_OPTION=profile .bin/neuroal bench "$@"
  [ -f "/tmp/$name.cubecl.log" ] && bash scripts/kernel_times.sh "/tmp/$name.cubecl.log" 12 | tee -a "$out/runs.log"
}
# The steps, in the order the issue needs them; STEPS picks and orders a subset, e.g. to put the
# profiles before the WGSL comparison or to rerun only the 7B case after a change. A step is
# [BUILD/]KIND-DTYPE[@LEVEL]: BUILD is a binary in .bin (default neuroal; neuroal-wgsl,
# neuroal-nofusion, neuroal-autotune: see device_prepare.sh), KIND one of
# tiny (perplexity of assets/tiny-llama), wt2 (perplexity), neuroal (the 7B-shaped prune),
# forward (0.84 B), trace-neuroal (the 7B prune with NEUROAL_TRACE's per-stage times), matmul
# (every kernel's time on both cases' products, `bench --matmul`; MATMUL sets the products),
# attention (the separate kernels and each flash kernel, `bench --attention`; ATTENTION sets the
# shapes), prunerows (the row pruning's shaders, `bench --prune-rows`; PRUNE_ROWS sets the
# weights), tune (`neuroal tune` on both cases' linears, kept for %tuned steps); and
# wt2-lambda, profile-forward, profile-neuroal, authors (the authors' code and neuroal's prune
# on the 7B-shaped checkpoint, the same windows), torch-forward (PyTorch's forward on the 0.84 B
# checkpoint). LEVEL, for autotune builds, is cubecl's
# CUBECL_AUTOTUNE_LEVEL (minimal, balanced, extensive, full): how many kernels it times per shape.
# A step ending in %KERNEL runs with NEUROAL_MATMUL=KERNEL (the linears' products with that one
# kernel, src/gpu/matmul.rs); %best takes the kernel the autotune runs before it found fastest
# on the most large shapes (`%burn`: burn's own choice). A step ending in +NAME runs with
# NEUROAL_ATTENTION=NAME (ops, flash-2, flash-4, flash-8, flash-unit: src/gpu/attention.rs);
# + comes last, as in forward-f16%burn+ops. %tuned runs with the kernels the last tune step kept.
# A step ending in ~all or ~none (before any ^N) runs with NEUROAL_FUSE=all|none: the linears
# that read one input multiplied as one product, or apart (src/gpu/fused.rs). A prune step ending in ^N runs the search's dense
# passes in batches of N candidates (--search-batch N; without it the prune's own choice, which
# at this shape is 1), after any +NAME. The default list checks the default build's
# perplexities on the card, times the issue's two cases with it, with what `neuroal tune` keeps
# (kernels, attention and fused groups: what a user's card runs), with q/k/v and gate/up all
# fused, with the kernel sweep's winners, without fusion, then with
# flash-2 on the 7B shape's heads of 128 (not yet launched there), with dense batches of 2 and
# 4 candidates, and with burn's own kernels,
# then traces and profiles; it wants WT2=1 BUILDS="default nofusion" prepared (a third build
# and wt2-llama would pass the 64 MiB the device tool carries, with the checkout's 4 MB).
steps=${STEPS:-tiny-f16 wt2-f16 wt2-f32 neuroal-f16 forward-f16 authors-f16 torch-forward-f16 tune-f16 neuroal-f16%tuned forward-f16%tuned forward-f16~all neuroal-f16~all matmul-f16 neuroal-f16%fastest forward-f16%fastest attention-f16 prunerows-f16 neuroal-nofusion/neuroal-f16 neuroal-nofusion/forward-f16 neuroal-f16+flash-2 neuroal-f16^2 neuroal-f16^4 forward-f16+ops forward-f16%burn+ops neuroal-f16%burn+ops wt2-lambda trace-neuroal-f16 neuroal-f16+flash-unit profile-forward profile-neuroal}
for step in $steps; do
  build=neuroal
  case $step in */*) build=${step%%/*}; step=${step#*/} ;; esac
  tag=""
  unset CUBECL_AUTOTUNE_LEVEL NEUROAL_MATMUL NEUROAL_ATTENTION NEUROAL_FUSE
  export XDG_CACHE_HOME="$none"
  batch=0
  case $step in *^*) batch=${step##*^}; tag="^$batch"; step=${step%^*} ;; esac
  case $step in *~*) export NEUROAL_FUSE=${step##*~}; tag="~$NEUROAL_FUSE$tag"; step=${step%~*} ;; esac
  case $step in *+*)
    export NEUROAL_ATTENTION=${step##*+}; tag="+$NEUROAL_ATTENTION$tag"; step=${step%+*} ;;
  esac
  case $step in *%*)
    kernel=${step##*%}; asked=$kernel; step=${step%\%*}
    # %best: the kernel the autotune runs so far found fastest on the most large shapes;
    # %fastest: the one the last matmul step timed fastest over its products.
    [ "$kernel" = best ] && kernel=$(cat "$logs"/*.decisions.jsonl 2>/dev/null | python3 scripts/autotune_summary.py --best /dev/stdin)
    [ "$kernel" = fastest ] && kernel=$(python3 scripts/matmul_summary.py "$logs/matmul-last.jsonl" --fastest 2>/dev/null)
    # %rules: the last matmul step's fastest kernel per weight shape (NEUROAL_MATMUL rules).
    [ "$kernel" = rules ] && kernel=$(python3 scripts/matmul_summary.py "$logs/matmul-last.jsonl" --rules 2>/dev/null)
    if [ "$kernel" = tuned ]; then
      if ! ls "$tuned"/neuroal/kernels-*.txt >/dev/null 2>&1; then echo "$build/$step%tuned: skipped, no tune step has kept kernels yet"; continue; fi
      export XDG_CACHE_HOME="$tuned"; kernel=""; tag="%tuned$tag"
    fi
    if [ -z "$kernel" ] && [ "$asked" != tuned ]; then echo "$build/$step%$asked: skipped, no autotune or matmul step has found a kernel yet"; continue; fi
    [ -n "$kernel" ] && export NEUROAL_MATMUL=$kernel
    # Rules are too long for a log's file name: the run is named %rules, the rules echoed.
    if [ "$asked" = rules ]; then echo "%rules: NEUROAL_MATMUL=$kernel"; tag="%rules$tag"; elif [ -n "$kernel" ]; then tag="%$kernel$tag"; fi ;;
  esac
  case $step in *@*) export CUBECL_AUTOTUNE_LEVEL=${step##*@}; tag="@${step##*@}$tag"; step=${step%@*} ;; esac
  dtype=${step##*-}
  case $step in
    wt2-lambda) wt2_lambda ;;
    authors-*) authors "$dtype" ;;
    torch-forward-*) torch_forward "$dtype" ;;
    profile-forward) profiled neuroal-forward-f16-profile --model "$(model_of neuroal ${PROFILE_FORWARD:-llama-0.8b --blocks 4})" --devices gpu --seqlen "$seqlen" --batch 4 --iters 2 --dtype "${PROFILE_DTYPE:-f16}" ;;
    profile-neuroal) profiled neuroal-neuroal-f16-profile --model "$(model_of neuroal ${PROFILE_NEUROAL:-llama2-7b --blocks 2})" --devices gpu --seqlen "$seqlen" --prune-sparsity 0.5 --nsamples 16 --search-nsamples 8 --iters 1 --dtype "${PROFILE_DTYPE:-f16}" ;;
    tiny-*) eval_tiny "$build" "$dtype" ;;
    matmul-*) matmul "$build" "$dtype" ;;
    tune-*) tune "$build" "$dtype" ;;
    attention-*) attention "$build" "$dtype" ;;
    prunerows-*) prune_rows "$build" "$dtype" ;;
    wt2-*) eval_wt2 "$build" "$dtype" ;;
    neuroal-*) prune_7b "$build" "$dtype" ;;
    forward-*) forward "$build" "$dtype" ;;
    trace-neuroal-*) [ -x ".bin/$build" ] && run "$build-trace-neuroal-$dtype$tag" NEUROAL_TRACE=1 ".bin/$build" bench --model "$(model_of "$build" $neuroal)" --devices gpu --seqlen "$seqlen" --prune-sparsity 0.5 --nsamples "$nsamples" --search-nsamples 8 --search-batch "$batch" --dtype "$dtype" && grep '^trace:' "$logs/$build-trace-neuroal-$dtype$tag.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
