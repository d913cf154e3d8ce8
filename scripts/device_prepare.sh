#!/usr/bin/env bash
# Prepares, here, what scripts/device_bench.sh needs on a lent GPU machine. That machine gets
# only the checkout plus at most 64 MiB of carried git-ignored folders, so this writes
#   .bin/  three builds (default: SPIR-V on Vulkan; --no-default-features: WGSL; --features
#          autotune), stripped, and wt2-llama with its test and validation texts, all
#          xz-compressed (about 62 MB; WGSL=0 leaves the WGSL build out);
#   .gl/   the Vulkan and EGL loader packages (the device README's recipe), if missing.
# Then: run `bash scripts/device_bench.sh` there with carry [".bin", ".gl"].
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
rm -rf .bin && mkdir -p .bin/wt2-llama
if [ "${WGSL:-1}" = 1 ]; then
  cargo build --release --no-default-features
  strip -o .bin/neuroal-wgsl "$target/release/neuroal"
fi
cargo build --release --features autotune
strip -o .bin/neuroal-autotune "$target/release/neuroal"
cargo build --release
strip -o .bin/neuroal "$target/release/neuroal"
cp ../shared/models/wt2-llama/config.json ../shared/models/wt2-llama/model.safetensors ../shared/models/wt2-llama/tokenizer.json .bin/wt2-llama/
cp ../shared/data/wikitext-2/test.txt ../shared/data/wikitext-2/valid.txt .bin/
xz -T0 -6 .bin/neuroal* .bin/wt2-llama/model.safetensors .bin/test.txt .bin/valid.txt
if [ ! -d .gl ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .bin .gl
