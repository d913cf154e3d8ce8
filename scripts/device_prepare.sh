#!/usr/bin/env bash
# Prepares, here, what scripts/device_bench.sh needs on a lent GPU machine. That machine gets
# only the checkout plus at most 64 MiB of carried git-ignored folders, so this writes
#   .bin/  the builds named in BUILDS (default "default nofusion", what device_bench.sh's
#          default steps compare; also "autotune"; "default" has fusion, "nofusion" is
#          --no-default-features --features vulkan, "wgsl" --no-default-features),
#          each stripped as neuroal[-FEATURES], and with WT2=1 wt2-llama with its test and
#          validation texts (for the wt2 steps), all xz-compressed: about 12.5 MB per build
#          and 24 MB for wt2-llama, so WT2=1 leaves room for two builds (the checkout
#          itself travels too, about 4 MB);
#          With AUTHORS=CHECKOUT also the authors' code (a local checkout of
#          github.com/eliacunegatti/NeuroAL, about 0.2 MB, never committed here) as
#          .bin/authors, and the WikiText-2 validation text, for the `authors` step: their code
#          timed on the same card and windows as neuroal's prune (scripts/time_authors_code.py);
#   .gl/   the Vulkan and EGL loader packages (the device README's recipe), if missing.
# Then: run `bash scripts/device_bench.sh` there with carry [".bin", ".gl"].
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
rm -rf .bin && mkdir -p .bin
for build in ${BUILDS:-default nofusion}; do
  case $build in
    default) cargo build --release; name=neuroal ;;
    nofusion) cargo build --release --no-default-features --features vulkan; name=neuroal-nofusion ;;
    wgsl) cargo build --release --no-default-features; name=neuroal-wgsl ;;
    *) cargo build --release --features "$build"; name="neuroal-${build//,/-}" ;;
  esac
  strip -o ".bin/$name" "$target/release/neuroal"
done
if [ "${WT2:-0}" = 1 ]; then
  mkdir -p .bin/wt2-llama
  cp ../shared/models/wt2-llama/config.json ../shared/models/wt2-llama/model.safetensors ../shared/models/wt2-llama/tokenizer.json .bin/wt2-llama/
  cp ../shared/data/wikitext-2/test.txt ../shared/data/wikitext-2/valid.txt .bin/
  xz -T0 -6 .bin/wt2-llama/model.safetensors .bin/test.txt .bin/valid.txt
fi
if [ -n "${AUTHORS:-}" ]; then
  [ -f "$AUTHORS/sparsity_distribution.py" ] && [ -d "$AUTHORS/lib" ] || { echo "AUTHORS=$AUTHORS: not a checkout of the authors' NeuroAL code"; exit 1; }
  mkdir -p .bin/authors
  (cd "$AUTHORS" && tar --exclude=.git -cf - .) | tar -xf - -C .bin/authors
  [ -f .bin/valid.txt.xz ] || { cp ../shared/data/wikitext-2/valid.txt .bin/ && xz -T0 -6 .bin/valid.txt; }
fi
xz -T0 -6 .bin/neuroal*
if [ ! -d .gl ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .bin .gl
