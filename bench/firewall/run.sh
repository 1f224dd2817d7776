#!/usr/bin/env bash
# Benchmark of `opskit firewall apply` on the lab's Docker host (docs/BENCHMARKS.md, ## firewall).
# Needs root (network namespaces). Builds release binaries, then runs the example
# crates/opskit-firewall/examples/reapply_bench.rs: apply time, then 100 re-applies under a
# prober that counts probes and flips, with an idle run and the plain-commands control.
#
#   bench/firewall/run.sh            # REAPPLIES=100 by default; output also in RESULTS
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REAPPLIES=${REAPPLIES:-100}
RESULTS=${RESULTS:-$ROOT/bench/firewall/results-$(date -u +%F).txt}
cd "$ROOT"
cargo build --release -p opskit
cargo build --release -p opskit-firewall --example reapply_bench
{
  echo "# machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$TARGET/release/examples/reapply_bench" "$TARGET/release/opskit" "$REAPPLIES" 2>/dev/null
} | tee "$RESULTS"
