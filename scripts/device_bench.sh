#!/usr/bin/env bash
# The issue-8 measurement on a lent GPU, in one go. The device machine receives only the checkout,
# so first, here: build both configurations and put the binaries in the git-ignored `.bin/`
#   cargo build --release && cp "$CARGO_TARGET_DIR/release/neuroal" .bin/neuroal
#   cargo build --release --no-default-features && cp "$CARGO_TARGET_DIR/release/neuroal" .bin/neuroal-wgsl
# and the Vulkan loader packages in `.gl/` (the device README says how); then run this script
# there with `.bin` and `.gl` carried. Each run prints its name, exit code and seconds, then
# bench's table; the full output of each run is kept under $OUT (or /tmp) as <name>.log.
set -uo pipefail
out="${OUT:-/tmp}"
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

# The shapes; a dry run elsewhere can shrink them, e.g.
#   FORWARD="tiny --blocks 2" NEUROAL="tiny --blocks 2" SEQLEN=64 NSAMPLES=4 bash scripts/device_bench.sh
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
