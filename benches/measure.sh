#!/usr/bin/env bash
# Replay throughput of the release build on captures of the shared corpus: prints a Markdown
# table (capture, size, records, best-of-N wall time, CPU time, pairs/s, MB/s, max RSS).
# Usage: benches/measure.sh [RUNS] (default 5). Needs ../shared/corpus and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
corpus=../shared/corpus
[ -d "$corpus" ] || { echo "needs $corpus" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/mirror-receiver
echo "| capture | MB | records | wall s (best of $runs) | CPU s | pairs/s | MB/s | max RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
for f in vxlan/real-load-10k.vxlan.pcap vxlan/real-mixed.vxlan.pcap pcap/http-zeek-206-retransmissions.pcap pcap/http-zeek-1000-requests-one-dropped-response.pcap; do
  path=$corpus/$f
  bytes=$(stat -c %s "$path")
  best=""; best_cpu=""; rss=0
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %U %S %M" -o /tmp/measure.time "$bin" --log-level warn replay "$path" > /tmp/measure.out
    read -r wall user sys maxrss < /tmp/measure.time
    cpu=$(echo "$user + $sys" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$wall < $best" | bc -l)" = 1 ]; then best=$wall; best_cpu=$cpu; fi
    [ "$maxrss" -gt "$rss" ] && rss=$maxrss
  done
  records=$(wc -l < /tmp/measure.out)
  # Wall times under 10 ms are below GNU time's resolution: report them as such.
  t=$(echo "if ($best < 0.01) 0.01 else $best" | bc -l)
  printf '| %s | %.1f | %d | %.2f | %.2f | %.0f | %.0f | %.1f |\n' "$(basename "$f")" \
    "$(echo "$bytes / 1000000" | bc -l)" "$records" "$best" "$best_cpu" \
    "$(echo "$records / $t" | bc -l)" "$(echo "$bytes / 1000000 / $t" | bc -l)" \
    "$(echo "$rss / 1024" | bc -l)"
done
