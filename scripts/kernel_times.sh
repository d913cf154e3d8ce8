#!/usr/bin/env bash
# Sums the GPU kernel times that cubecl logs (run with CUBECL_DEBUG_LOG=FILE
# CUBECL_DEBUG_OPTION=profile) per kernel kind, largest first, with each kind's share and count:
#   bash scripts/kernel_times.sh FILE [ROWS]
# Profiling waits for each kernel, so the sum is the kernels' own time, not the run's. Our WGSL
# shaders (src/gpu/kernels.rs) are dispatched through wgpu directly and are not in the log.
set -euo pipefail
log=${1:?usage: kernel_times.sh CUBECL_LOG [ROWS]}
rows=${2:-15}
awk -F'|' '
  /^\| [0-9.]+(ns|µs|ms|s) *\|/ {
    t = $2; gsub(/ /, "", t)
    v = t + 0
    if (t ~ /ns$/) v /= 1e6; else if (t ~ /µs$/) v /= 1e3; else if (t ~ /ms$/) v *= 1; else v *= 1e3
    k = $3; gsub(/^ +| +$/, "", k)
    sub(/_[0-9a-f]+$/, "", k)
    if (k ~ /^Matmul/) k = "Matmul"
    sum[k] += v; n[k]++; total += v
  }
  END {
    if (total == 0) { print "no kernel timings in the log"; exit }
    printf "%-40s %12s %7s %9s\n", "kernel", "ms", "share", "launches"
    for (k in sum) printf "%-40s %12.1f %6.1f%% %9d\n", k, sum[k], 100 * sum[k] / total, n[k] | "sort -k2 -n -r | head -n '"$rows"'"
    close("sort -k2 -n -r | head -n '"$rows"'")
    printf "%-40s %12.1f\n", "all kernels", total
  }' "$log"
