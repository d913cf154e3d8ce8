#!/usr/bin/env bash
# The issue-8 measurement on a lent GPU, in one go. Prepare `.bin/` and `.gl/` here first with
# scripts/device_prepare.sh, then run this script there with `.bin` and `.gl` carried. Each run
# prints its name, exit code and seconds, then bench's table (or eval's and prune's last
# lines); the full output of each run is kept under $OUT (or /tmp) as <name>.log.
set -uo pipefail
out="${OUT:-/tmp}"
# Carried compressed (see device_prepare.sh); xz, or Python's lzma where xz is missing.
for f in .bin/*.xz .bin/wt2-llama/*.xz; do
  [ -f "$f" ] || continue
  if command -v xz >/dev/null; then
    xz -d -f "$f"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f" && rm "$f"
  fi
done
chmod +x .bin/neuroal .bin/neuroal-wgsl 2>/dev/null
if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg}"
mkdir -p "$XDG_RUNTIME_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

run() {
  local name=$1; shift
  local start=$(date +%s%N)
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-28s rc=%d %4d.%01d s  ' "$name" "$rc" $(( ms / 1000 )) $(( ms % 1000 / 100 ))
  echo
  # bench's table (a header and one row per device), or the error.
  grep -v "^wrote a random" "$out/$name.log" | tail -n 4
}

# Correctness on the real card first: wt2-llama's perplexity (82.3059 in f32 on the CPU at
# seqlen 256; f16 within 0.3%), and NeuroAL's λ in f16 (0.10 / 0.10 on the CPU).
if [ "${WT2:-1}" = 1 ] && [ -f .bin/wt2-llama/model.safetensors ]; then
  for bin in neuroal neuroal-wgsl; do
    for dt in f32 f16; do
      [ -x ".bin/$bin" ] && run "$bin-wt2-eval-$dt" ".bin/$bin" eval --model .bin/wt2-llama --text .bin/test.txt --seqlen 256 --device gpu --dtype "$dt"
    done
  done
  run "neuroal-wt2-neuroal-f16" .bin/neuroal prune --model .bin/wt2-llama --calib .bin/valid.txt --seqlen 256 --sparsity 0.7 --top-up neuroal --device gpu --dtype f16 --out /tmp/wt2-70-f16 --force
  cp /tmp/wt2-70-f16/report.json "$out/wt2-70-f16-report.json" 2>/dev/null
  grep -oE '"(lambda_[a-z]*|peak_[a-z_]*)": [0-9.]*' /tmp/wt2-70-f16/report.json 2>/dev/null | tr '\n' ' '; echo
fi

# The shapes; a dry run elsewhere can shrink them (and skip wt2, slow on an emulator), e.g.
#   WT2=0 FORWARD="tiny --blocks 2" NEUROAL="tiny --blocks 2" SEQLEN=64 NSAMPLES=4 bash scripts/device_bench.sh
forward=${FORWARD:-llama-0.8b --blocks 16}
neuroal=${NEUROAL:-llama2-7b --blocks 8}
seqlen=${SEQLEN:-512}
nsamples=${NSAMPLES:-64}
for bin in neuroal neuroal-wgsl; do
  [ -x ".bin/$bin" ] || continue
  run "$bin-forward-f16" ".bin/$bin" bench --synthetic $forward --devices gpu --seqlen "$seqlen" --batch 4 --dtype f16
  run "$bin-neuroal-f16" ".bin/$bin" bench --synthetic $neuroal --devices gpu --seqlen "$seqlen" --prune-sparsity 0.5 --nsamples "$nsamples" --search-nsamples 8 --dtype f16
done
run "neuroal-neuroal-f32" .bin/neuroal bench --synthetic $neuroal --devices gpu --seqlen "$seqlen" --prune-sparsity 0.5 --nsamples "$nsamples" --search-nsamples 8 --dtype f32
