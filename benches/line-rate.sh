#!/usr/bin/env bash
# The five performance ratios of issue #6, taken in one run on this machine, printed as a Markdown
# table (measurement | ours | baseline | ratio | target | pass) under the machine it ran on.
# Everything runs on loopback (127.0.0.1); every process the script starts is stopped on exit.
#
# 1. Replay vs tshark. Pairs per CPU-second (user+sys of the whole process, best of $RUNS) of
#    `mirror-receiver replay CAPTURE` (records to /dev/null) against tshark on the same capture,
#    its JSON dissector off and fields output only:
#    `tshark --disable-protocol json -r CAPTURE -T fields -e http.request_in -Y http.response`
#    (tshark's pairs = responses with their request found). tshark decodes VXLAN on UDP 4789 by
#    default. CAPTURE: ../shared/corpus/vxlan/real-load-10k.vxlan.pcap, else
#    samples/sample.vxlan.pcap. Skipped, with a message, when tshark is not installed.
# 2. Loopback ingest. How many datagrams one core takes without losing any: the daemon (taken =
#    processed, mirror_datagrams_total) against examples/drain.rs, a plain recvmmsg receiver that
#    only counts them, with the same receive buffer. Both measured alike: the receiver is pinned to
#    the last CPU and stopped (SIGSTOP); `mirror-receiver send`, pinned to the other CPUs, puts
#    ~120k datagrams of CAPTURE in its socket queue (fewer than it holds: checked, no kernel
#    drop); the receiver is continued and takes them all; rate = datagrams / the receiver's CPU
#    time for them (/proc/PID/task/*/schedstat; the daemon's idle CPU over the same time
#    subtracted). Best of $INGEST_RUNS for each, drain and daemon in turns. (Stepping the senders' rate does not work on
#    a 2-core box: one core of `send` reaches ~150-250k datagrams/s and neither receiver loses
#    any at that rate.)
# 3. Memory. (a) Per idle open connection: a daemon (--flow-idle-timeout 3600) warmed up with
#    samples/sample.vxlan.pcap; VmRSS read; a capture of 10,000 TCP connections each with handshake,
#    one complete HTTP exchange and no FIN (benches/gen_idle.py) sent; once mirror_flows_active
#    shows the 10,000, VmRSS again: (delta) / 10,000. (b) Stability: CAPTURE sent 20 times, each
#    pass waited for; VmRSS after pass 20 against after pass 2.
# 4. Accounting under overload. A fresh daemon pinned to the last CPU with a small receive buffer
#    (--recv-buffer 262144: on 2 cores it outruns two senders, so with the default 64 MiB queue
#    nothing is ever dropped), two concurrent unpaced senders (--loop, ~1.2 M datagrams in all).
#    Once the counters settle: datagrams sent (as each `send` reports them) = received
#    (mirror_received_datagrams_total, before admission) + kernel drops (mirror_kernel_drops_total)
#    and received = processed (mirror_datagrams_total) + refused + counted drops -- exactly.
#    Cross-checked with the socket's own drop counter (/proc/net/udp) and the loopback backlog
#    drops (/proc/net/softnet_stat), which no receiver could see.
# 5. Kafka producer CPU per record. A tansu broker (in memory, one partition per topic). Capture:
#    100,000 complete exchanges from benches/gen_idle.py --close --body 300 (records of ~800
#    bytes). Ours: CPU of `replay CAPTURE --kafka-brokers ...` (acknowledged by the broker) minus
#    CPU of the same replay to /dev/null, per record. Baseline: CPU of examples/produce_baseline.rs
#    (rdkafka with the receiver's producer settings) producing the same records (the JSON lines
#    replay prints) minus its --dry-run (read and parse only), per record. Best of $KAFKA_RUNS
#    runs for each of the four (the receiver's Kafka CPU varies by +-20 % from run to run).
#
# 6. Scaling. Zero-loss capacity by the wall clock, 2 workers against 1, and its projection to 16
#    vCPUs (see measure_scaling).
# 7. Live capture ingest. Frames per CPU-second of one core: `mirror-receiver capture` (one
#    worker, the whole pipeline, records to /dev/null) against tcpdump -w /dev/null (libpcap's
#    TPACKET_V3 ring and nothing else: the plain packet-socket reader), each with a 256 MiB ring,
#    on one end of a veth pair in a network namespace of its own. The receiver, pinned to the last
#    CPU, is stopped; a python AF_PACKET sender puts CAPTURE's inner frames (VXLAN removed) on the
#    other end; the receiver is continued and takes them all from its ring; rate = frames / its
#    CPU time for them (schedstat, the daemon's idle CPU subtracted). Best of $INGEST_RUNS, in
#    turns. Needs root and tcpdump. No target: reported.
#
# Usage: benches/line-rate.sh
#   env: RUNS=5 INGEST_RUNS=5 KAFKA_RUNS=7 SCALE_RUNS=5 CAPTURE=FILE TANSU=BIN
#   ONLY="1 2 3 4 5 6 7" (rows to take)
# Needs: cargo, python3, curl, taskset; tshark for row 1, tansu for row 5 (~/.cargo/bin/tansu).
# CPU times come from getrusage/schedstat at microsecond resolution (GNU time's 10 ms is too
# coarse for a 0.06 s replay). Takes about 90 s after the build. Exits non-zero when a
# measurement could not be taken (the others are still printed).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
KAFKA_RUNS=${KAFKA_RUNS:-7}
INGEST_RUNS=${INGEST_RUNS:-5}
IDLE_CONNS=10000
RECV_BUFFER=67108864 # the daemon's default --recv-buffer; the drain gets the same
OVERLOAD_RECV_BUFFER=262144 # row 4: a queue that overflows whenever the daemon falls behind
if [ -z "${CAPTURE:-}" ]; then
  CAPTURE=../shared/corpus/vxlan/real-load-10k.vxlan.pcap
  [ -f "$CAPTURE" ] || CAPTURE=samples/sample.vxlan.pcap
fi
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}

log() { echo "[line-rate $(date +%T)] $*" >&2; }

TMP=$(mktemp -d /tmp/line-rate.XXXXXX)
PIDS=()
RECV_PIN=() # taskset prefixes of measurement 2
SEND_PIN=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (cargo build --release --bins --examples)"
cargo build --release --quiet --bins --examples
BIN=target/release/mirror-receiver
DRAIN=target/release/examples/drain
PRODUCE=target/release/examples/produce_baseline

# ---------------------------------------------------------------------------------------------
# helpers

# CPU seconds (user+sys, microsecond resolution) of one command: `cpu OUT ERR CMD...` writes the
# command's stdout to OUT and stderr to ERR, prints "CPU WALL EXIT".
cat > "$TMP/cpu.py" <<'EOF'
import resource, subprocess, sys, time
out, err = sys.argv[1], sys.argv[2]
a = resource.getrusage(resource.RUSAGE_CHILDREN)
t = time.monotonic()
with open(out, "wb") as o, open(err, "ab") as e:
    rc = subprocess.call(sys.argv[3:], stdout=o, stderr=e)
wall = time.monotonic() - t
b = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime:.6f} {wall:.6f} {rc}")
EOF
cpu() { python3 "$TMP/cpu.py" "$@"; }

free_port() { # udp|tcp
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

calc() { python3 -c "print($1)"; }
fmt() { python3 -c "import sys; print(format($1, sys.argv[1]))" "$2"; }
# Smallest and largest of numbers on stdin (space or newline separated). The rows take the best
# of their runs on each side: a run's CPU time is a fixed amount of work plus whatever the machine
# added (this VM's speed drifts between two states), so the fastest run of each side is the
# estimate least distorted, and medians are logged beside it.
min_of() { tr ' ' '\n' | grep . | sort -g | head -1; }
max_of() { tr ' ' '\n' | grep . | sort -g | tail -1; }
# Median of numbers on stdin (space or newline separated): the middle one, or the mean of the two.
median_of() {
  tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Sum of the `drops` column of /proc/net/udp for the sockets bound to a local port.
udp_drops() {
  awk -v p="$(printf '%04X' "$1")" 'FNR > 1 { split($2, a, ":"); if (a[2] == p) s += $13 }
    END { print s + 0 }' /proc/net/udp /proc/net/udp6 2>/dev/null
}
# Datagrams the loopback backlog dropped before any socket (softnet_stat column 2, all CPUs).
softnet_drops() {
  local s=0 a b rest
  while read -r a b rest; do s=$((s + 16#$b)); done < /proc/net/softnet_stat
  echo "$s"
}

# Capture datagram count (pcap records; every one is a VXLAN datagram in the captures used).
datagrams_in() {
  python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
if d[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
    sys.exit("not a classic pcap: " + sys.argv[1])
e = "<" if d[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
n, off = 0, 24
while off + 16 <= len(d):
    off += 16 + struct.unpack(e + "IIII", d[off:off + 16])[2]
    n += 1
print(n)
EOF
}

# --- the daemon ---
DPID=""
UDP_PORT=""
ADMIN=""
start_daemon() { # extra run flags...
  UDP_PORT=$(free_port udp)
  local aport
  aport=$(free_port tcp)
  ADMIN="http://127.0.0.1:$aport"
  "${RECV_PIN[@]}" "$BIN" --log-level warn run --listen "127.0.0.1:$UDP_PORT" --admin-listen "127.0.0.1:$aport" \
    --output /dev/null --spool-dir "$TMP/spool" "$@" 2>> "$TMP/daemon.log" &
  DPID=$!
  PIDS+=("$DPID")
  local i
  for i in $(seq 200); do
    curl -sf "$ADMIN/metrics" > /dev/null 2>&1 && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  log "the daemon did not start; its log:"
  tail -20 "$TMP/daemon.log" >&2
  return 1
}
stop_daemon() {
  [ -n "$DPID" ] || return 0
  kill -TERM "$DPID" 2>/dev/null || true
  wait "$DPID" 2>/dev/null || true
  DPID=""
}
metrics() { curl -sf "$ADMIN/metrics"; }
# Sum of every series of a metric (all label sets); empty when the daemon does not expose it.
metric() { # NAME [metrics text file]
  local src=${2:-}
  if [ -z "$src" ]; then
    src=$TMP/m.txt
    metrics > "$src"
  fi
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 }
    END { if (f) printf "%.0f\n", s }' "$src"
}
# Datagrams the daemon took off its sockets (before admission).
received() { metric mirror_received_datagrams_total; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DPID/status"; }

# Waits until the daemon's received count reaches TARGET or stops moving for 2.5 s (its
# counters are refreshed about once a second); prints the last value.
settle_received() { # TARGET
  local last=-1 v same=0
  while :; do
    v=$(received)
    [ "$v" -ge "$1" ] && break
    if [ "$v" = "$last" ]; then
      same=$((same + 1))
      [ "$same" -ge 10 ] && break
    else
      same=0
    fi
    last=$v
    sleep 0.25
  done
  echo "$v"
}

# Runs N concurrent senders of CAPTURE to a port, each at RATE/N (0 = unpaced) with LOOPS loops.
# Sets SENT (datagrams, as the senders report them) and WALL (seconds until the last finished).
SENT=0
WALL=0
send_load() { # PORT RATE LOOPS N
  local port=$1 rate=$2 loops=$3 n=$4 i pids=() each t0 t1
  each=$((rate / n))
  if [ "$rate" -gt 0 ] && [ "$each" -lt 1 ]; then each=1; fi
  t0=$(date +%s.%N)
  for i in $(seq "$n"); do
    "${SEND_PIN[@]}" "$BIN" --log-level warn send --to "127.0.0.1:$port" --rate "$each" --loop "$loops" "${SEND_CAPTURE:-$CAPTURE}" \
      2> "$TMP/send.$i.err" &
    pids+=($!)
    PIDS+=($!)
  done
  for i in "${pids[@]}"; do
    wait "$i" || { log "send failed: $(cat "$TMP"/send.*.err)"; return 1; }
  done
  t1=$(date +%s.%N)
  SENT=0
  for i in $(seq "$n"); do
    SENT=$((SENT + $(sed -n 's/.*sent \([0-9]*\) datagrams.*/\1/p' "$TMP/send.$i.err")))
  done
  WALL=$(calc "$t1 - $t0")
}

# ---------------------------------------------------------------------------------------------
ROWS=()
FAILED=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }
pass_if() { if [ "$(calc "1 if $1 else 0")" = 1 ]; then echo yes; else echo "**no**"; fi; }

[ -f "$CAPTURE" ] || { log "no capture at $CAPTURE"; exit 1; }
NDG=$(datagrams_in "$CAPTURE")
# Row 2's fill: about 120k datagrams (3 passes of real-load-10k); the 64 MiB queue holds ~142k.
FILL_LOOPS=$(calc "max(1, 125000 // $NDG)")
log "capture $CAPTURE: $NDG datagrams"

# 1 -------------------------------------------------------------------------------------------
measure_tshark() {
  if ! command -v tshark > /dev/null; then
    log "row 1 skipped: tshark is not installed (apt-get install tshark)"
    row "1. pairs per CPU-second, replay vs tshark" "-" "tshark not installed" "-" ">= 50x" "not measured"
    FAILED+=(1)
    return
  fi
  local i r ours=() theirs=() pairs tpairs best tbest
  "$BIN" --log-level warn replay "$CAPTURE" > "$TMP/replay.jsonl"
  pairs=$(wc -l < "$TMP/replay.jsonl")
  # Taken in turns, so that a change in the machine's speed during the row (this VM's CPU speed
  # drifts) weighs on both sides alike.
  for i in $(seq "$RUNS"); do
    r=$(cpu /dev/null "$TMP/replay.err" "$BIN" --log-level warn replay "$CAPTURE" --output /dev/null)
    ours+=("${r%% *}")
    r=$(cpu "$TMP/tshark.out" "$TMP/tshark.err" tshark --disable-protocol json -r "$CAPTURE" \
      -T fields -e http.request_in -Y http.response)
    theirs+=("${r%% *}")
  done
  tpairs=$(grep -c . "$TMP/tshark.out" || true)
  best=$(echo "${ours[*]}" | min_of)
  tbest=$(echo "${theirs[*]}" | min_of)
  log "1: replay $pairs pairs, CPU s ${ours[*]}; tshark $tpairs pairs, CPU s ${theirs[*]};" \
    "ratio of medians $(calc "round($(echo "${theirs[*]}" | median_of) / $(echo "${ours[*]}" | median_of) * $pairs / max(1, $tpairs), 1)")x"
  local o t ratio
  o=$(calc "$pairs / $best")
  t=$(calc "$tpairs / $tbest")
  ratio=$(calc "$o / $t")
  row "1. pairs per CPU-second, replay vs tshark ($(basename "$CAPTURE"))" \
    "$(fmt "$o" ',.0f') ($pairs pairs, $(fmt "$best" .3f) s)" \
    "$(fmt "$t" ',.0f') ($tpairs pairs, $(fmt "$tbest" .3f) s)" "$(fmt "$ratio" .1f)x" ">= 50x" \
    "$(pass_if "$ratio >= 50")"
}

# 2 -------------------------------------------------------------------------------------------
# Receive capacity of one core, measured the same way for both receivers: the receiver, pinned
# to the last CPU, is stopped (SIGSTOP); the senders, pinned to the other CPUs, put FILL datagrams
# in its socket's receive queue (fewer than the queue holds: no drop); the receiver is continued
# (SIGCONT) and takes them all. Rate = FILL / the receiver's CPU time over that (sum of
# /proc/PID/task/*/schedstat, less its idle CPU over as long a time; for the daemon "taken" means
# processed: mirror_datagrams_total). So a full queue, no wakeups, no sender in the way.
cpu_ns() { # PID: CPU time of every thread, in ns
  cat /proc/"$1"/task/*/schedstat 2> /dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
}
drain_trial() { # sets TR_RATE (by CPU), TR_SPAN_RATE (by its own clock), TR_GOT, TR_DROPS
  local port pid i c0 c1 line got drops span_rate
  port=$(free_port udp)
  : > "$TMP/drain.out"
  "${RECV_PIN[@]}" "$DRAIN" --listen "127.0.0.1:$port" --rcvbuf "$RECV_BUFFER" --idle-exit 1 \
    > "$TMP/drain.out" &
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 100); do
    if grep -q listening "$TMP/drain.out"; then break; fi
    sleep 0.05
  done
  kill -STOP "$pid"
  send_load "$port" 0 "$FILL_LOOPS" 1
  c0=$(cpu_ns "$pid")
  kill -CONT "$pid"
  # It stops 1 s after the last datagram: read its CPU once the count is in.
  while :; do
    kill -USR1 "$pid" 2> /dev/null || break
    sleep 0.2
    line=$(grep datagrams= "$TMP/drain.out" | tail -1)
    got=$(sed 's/.*datagrams=\([0-9]*\).*/\1/' <<< "$line")
    [ "${got:-0}" -ge "$SENT" ] && break
  done
  c1=$(cpu_ns "$pid")
  wait "$pid" || true
  line=$(grep datagrams= "$TMP/drain.out" | tail -1)
  drops=$(sed 's/.*kernel_drops=\([0-9?]*\).*/\1/' <<< "$line")
  span_rate=$(sed 's/.*rate=\([0-9]*\).*/\1/' <<< "$line")
  TR_RATE=$(calc "int($got / (($c1 - $c0) / 1e9))")
  TR_SPAN_RATE=$span_rate TR_GOT=$got TR_DROPS=$drops
}
daemon_trial() { # sets TR_RATE (by CPU), TR_PROC (processed), TR_GOT (received), TR_DROPS
  local r0 p0 d0 c0 c1 t0 t1 idle got p drops i
  # Its idle CPU (admin polls included) per second, over 2 s.
  c0=$(cpu_ns "$DPID"); t0=$(date +%s.%N)
  for i in 1 2 3 4; do metrics > /dev/null; sleep 0.5; done
  c1=$(cpu_ns "$DPID"); t1=$(date +%s.%N)
  idle=$(calc "($c1 - $c0) / ($t1 - $t0)")
  r0=$(received)
  p0=$(metric mirror_datagrams_total "$TMP/m.txt")
  d0=$(udp_drops "$UDP_PORT")
  kill -STOP "$DPID"
  send_load "$UDP_PORT" 0 "$FILL_LOOPS" 1
  c0=$(cpu_ns "$DPID"); t0=$(date +%s.%N)
  kill -CONT "$DPID"
  for i in $(seq 120); do
    sleep 0.5
    p=$(($(metric mirror_datagrams_total) - p0))
    [ "$p" -ge "$SENT" ] && break
  done
  c1=$(cpu_ns "$DPID"); t1=$(date +%s.%N)
  got=$(($(received) - r0))
  drops=$(($(udp_drops "$UDP_PORT") - d0))
  TR_RATE=$(calc "int($p / max(1e-9, ($c1 - $c0 - $idle * ($t1 - $t0)) / 1e9))")
  TR_PROC=$p TR_GOT=$got TR_DROPS=$drops
}
measure_ingest() {
  local n i d=0 b=0 ds=() bs=()
  n=$(nproc)
  if [ "$n" -ge 2 ]; then
    RECV_PIN=(taskset -c $((n - 1)))
    SEND_PIN=(taskset -c "0-$((n - 2))")
  fi
  # Drain and daemon in turns (the daemon stopped while the drain runs), so a change in the
  # machine's speed weighs on both alike.
  start_daemon || DPID=""
  for i in $(seq "$INGEST_RUNS"); do
    [ -z "$DPID" ] || kill -STOP "$DPID"
    drain_trial
    [ -z "$DPID" ] || kill -CONT "$DPID"
    log "2: drain: $TR_RATE datagrams per CPU-second ($TR_SPAN_RATE/s by its own clock);" \
      "sent $SENT, received $TR_GOT, kernel drops $TR_DROPS"
    if [ "$TR_DROPS" = 0 ] && [ "$TR_GOT" = "$SENT" ]; then bs+=("$TR_RATE"); fi
    [ -n "$DPID" ] || continue
    daemon_trial
    log "2: daemon: $TR_RATE datagrams per CPU-second; sent $SENT, received $TR_GOT," \
      "processed $TR_PROC, kernel drops $TR_DROPS"
    if [ "$TR_DROPS" = 0 ] && [ "$TR_PROC" = "$SENT" ]; then ds+=("$TR_RATE"); fi
  done
  stop_daemon
  # Trials that lost a datagram do not count.
  if [ "${#bs[@]}" -gt 0 ]; then b=$(echo "${bs[*]}" | max_of); fi
  if [ "${#ds[@]}" -gt 0 ]; then d=$(echo "${ds[*]}" | max_of); fi
  if [ "${#bs[@]}" -gt 0 ] && [ "${#ds[@]}" -gt 0 ]; then
    log "2: best daemon $d, best drain $b; ratio of medians" \
      "$(calc "round(100 * $(echo "${ds[*]}" | median_of) / $(echo "${bs[*]}" | median_of))") %"
  fi
  b=${b%.*} d=${d%.*}
  RECV_PIN=()
  SEND_PIN=()
  if [ "$d" = 0 ] || [ "$b" = 0 ]; then
    FAILED+=(2)
    row "2. loopback ingest, zero loss, one core (datagrams/s)" "$d" "$b" "-" ">= 75 %" "not measured"
    return
  fi
  local ratio
  ratio=$(calc "100 * $d / $b")
  row "2. loopback ingest without loss, datagrams per CPU-second of one core" \
    "$(fmt "$d" ',.0f')" "$(fmt "$b" ',.0f') (recvmmsg drain)" \
    "$(fmt "$ratio" .0f) %" ">= 75 %" "$(pass_if "$ratio >= 75")"
}

# 3 -------------------------------------------------------------------------------------------
wait_flows() { # TARGET TIMEOUT_S: waits until mirror_flows_active >= TARGET; prints it
  local v i
  for i in $(seq $(($2 * 4))); do
    v=$(metric mirror_flows_active)
    [ "$v" -ge "$1" ] && break
    sleep 0.25
  done
  echo "$v"
}
measure_memory() {
  python3 benches/gen_idle.py --conns "$IDLE_CONNS" "$TMP/idle.pcap"
  local idle_dg
  idle_dg=$(datagrams_in "$TMP/idle.pcap")
  start_daemon --flow-idle-timeout 3600 || {
    FAILED+=(3)
    row "3a. memory per idle open connection" "-" "-" "-" "<= 1 KiB" "not measured"
    row "3b. RSS after 20 replays vs after 2" "-" "-" "-" "<= 2 %" "not measured"
    return
  }
  local before f0 r0 r1 f1 per
  # Warm up with a few connections (not thousands: their freed memory would be reused).
  "$BIN" --log-level warn send --to "127.0.0.1:$UDP_PORT" --rate 1000 samples/sample.vxlan.pcap 2> /dev/null
  sleep 2.5
  f0=$(metric mirror_flows_active)
  r0=$(rss_kib)
  before=$(received)
  "$BIN" --log-level warn send --to "127.0.0.1:$UDP_PORT" --rate 20000 "$TMP/idle.pcap" 2> "$TMP/idle.err"
  settle_received $((before + idle_dg)) > /dev/null
  f1=$(wait_flows $((f0 + IDLE_CONNS)) 20)
  sleep 1.5
  r1=$(rss_kib)
  log "3a: flows $f0 -> $f1, VmRSS $r0 -> $r1 KiB"
  if [ "$((f1 - f0))" -lt "$IDLE_CONNS" ]; then
    FAILED+=(3)
    row "3a. memory per idle open connection" "only $((f1 - f0)) flows held" "-" "-" "<= 1 KiB" \
      "not measured"
  else
    per=$(calc "($r1 - $r0) * 1024 / ($f1 - $f0)")
    row "3a. memory per idle open connection ($((f1 - f0)) held)" "$(fmt "$per" ',.0f') B" \
      "-" "-" "<= 1024 B" "$(pass_if "$per <= 1024")"
  fi
  # 3b: the capture 20 times, each pass taken in full before the next.
  local i r2=0 r20=0
  for i in $(seq 20); do
    before=$(received)
    "$BIN" --log-level warn send --to "127.0.0.1:$UDP_PORT" --rate 100000 "$CAPTURE" 2> /dev/null
    settle_received $((before + NDG)) > /dev/null
    if [ "$i" = 2 ]; then sleep 1; r2=$(rss_kib); fi
    if [ "$i" = 20 ]; then sleep 1; r20=$(rss_kib); fi
  done
  stop_daemon
  local growth
  growth=$(calc "100 * ($r20 - $r2) / $r2")
  log "3b: VmRSS after pass 2 $r2 KiB, after pass 20 $r20 KiB"
  row "3b. VmRSS after 20 passes of $(basename "$CAPTURE") vs after 2" "$(fmt "$r20" ,) KiB" \
    "$(fmt "$r2" ,) KiB" "$(fmt "$growth" +.2f) %" "within 2 %" \
    "$(pass_if "abs($growth) <= 2")"
}

# 4 -------------------------------------------------------------------------------------------
measure_accounting() {
  local n
  n=$(nproc)
  if [ "$n" -ge 2 ]; then RECV_PIN=(taskset -c $((n - 1))); fi
  local title="4. overload accounting: 2 unpaced senders, daemon on 1 core, $((OVERLOAD_RECV_BUFFER / 1024)) KiB receive buffer"
  if ! start_daemon --recv-buffer "$OVERLOAD_RECV_BUFFER"; then
    RECV_PIN=()
    FAILED+=(4)
    row "$title" "-" "-" "-" "exact" "not measured"
    return
  fi
  RECV_PIN=()
  local f=$TMP/m4.txt s0 sent wall loops
  loops=$(calc "max(2, 600000 // $NDG)")
  s0=$(softnet_drops)
  send_load "$UDP_PORT" 0 "$loops" 2
  sent=$SENT wall=$WALL
  sleep 0.5
  settle_received "$sent" > /dev/null
  sleep 2 # one more refresh of every counter
  metrics > "$f"
  local recv proc kd kd_proc refused counted counted_names backlog
  recv=$(metric mirror_received_datagrams_total "$f")
  proc=$(metric mirror_datagrams_total "$f")
  kd=$(metric mirror_kernel_drops_total "$f")
  kd_proc=$(udp_drops "$UDP_PORT")
  refused=$(metric mirror_ingest_refused_total "$f")
  backlog=$(($(softnet_drops) - s0))
  # Counted ingest drops, should the daemon ever count some: *_drop(s|ped)/overflow series about
  # datagrams, other than the kernel's (decode drops are processed datagrams).
  counted_names=$(awk '/^mirror_/ { sub(/[{ ].*/, "", $1); print $1 }' "$f" | sort -u |
    grep -E '^mirror_(ingest|datagrams|queue|shard|recv|received)[a-z_]*(drop|dropped|overflow)[a-z_]*_total$' |
    grep -v kernel || true)
  counted=0
  for n in $counted_names; do counted=$((counted + $(metric "$n" "$f"))); done
  stop_daemon
  if [ -z "$recv" ] || [ -z "$kd" ]; then
    # Without the daemon's own counters the identity would hold by construction: no row.
    FAILED+=(4)
    row "$title" "-" "-" "-" "exact" "not measured (no mirror_received_datagrams_total / mirror_kernel_drops_total)"
    return
  fi
  log "4: sent $sent in $(fmt "$wall" .2f) s; received $recv; processed $proc;" \
    "refused $refused; counted drops $counted [${counted_names//$'\n'/ }]; kernel drops $kd;" \
    "/proc/net/udp drops $kd_proc; loopback backlog drops $backlog"
  local lhs=$((recv + kd)) ok2=yes pass=yes
  if [ "$recv" != "$((proc + refused + counted))" ]; then ok2="**no**"; fi
  if [ "$sent" != "$lhs" ] || [ "$ok2" != yes ]; then pass="**no**"; fi
  row "$title" \
    "received $(fmt "$recv" ,) + kernel drops $(fmt "$kd" ,) = $(fmt "$lhs" ,); processed $(fmt "$proc" ,) + refused $refused + counted $counted = received: $ok2" \
    "sent $(fmt "$sent" ,)" "difference $((sent - lhs))" "exact" "$pass"
}

# 5 -------------------------------------------------------------------------------------------
measure_kafka() {
  if [ ! -x "$TANSU" ]; then
    log "row 5 skipped: tansu not found (cargo install tansu --locked)"
    FAILED+=(5)
    row "5. producer CPU per record vs rdkafka" "-" "tansu not installed" "-" "<= 1.25x" "not measured"
    return
  fi
  local port url
  port=$(free_port tcp)
  url="tcp://127.0.0.1:$port"
  env -u RUST_LOG "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/ > "$TMP/tansu.log" 2>&1 &
  PIDS+=($!)
  local i
  for i in $(seq 200); do
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
    sleep 0.1
  done
  for t in ours base; do
    for i in $(seq 5); do
      env -u RUST_LOG "$TANSU" topic create "lr.$t" --broker "$url" --partitions 1 \
        > /dev/null 2>&1 && break
      sleep 0.3
    done
  done
  # 100,000 complete exchanges (records of about 800 bytes, like real-load-10k's): enough CPU per
  # run for the differences to stand out of the noise.
  local kcap=$TMP/load.pcap
  python3 benches/gen_idle.py --close --conns 100000 --body 300 "$kcap"
  "$BIN" --log-level warn replay "$kcap" > "$TMP/records.jsonl"
  local n
  n=$(wc -l < "$TMP/records.jsonl")
  local k=() z=() p=() d=() r
  for i in $(seq "$KAFKA_RUNS"); do
    rm -rf "$TMP/spool5"
    r=$(cpu /dev/null "$TMP/k.err" "$BIN" --log-level warn replay "$kcap" \
      --kafka-brokers "127.0.0.1:$port" --topic lr.ours --spool-dir "$TMP/spool5")
    [ "${r##* }" = 0 ] || { log "5: replay to kafka failed: $(tail -3 "$TMP/k.err")"; FAILED+=(5); return; }
    k+=("${r%% *}")
    r=$(cpu /dev/null "$TMP/z.err" "$BIN" --log-level warn replay "$kcap" --output /dev/null)
    z+=("${r%% *}")
    r=$(cpu "$TMP/p.out" "$TMP/p.err" "$PRODUCE" --brokers "127.0.0.1:$port" --topic lr.base \
      "$TMP/records.jsonl")
    [ "${r##* }" = 0 ] || { log "5: produce_baseline failed: $(tail -3 "$TMP/p.err")"; FAILED+=(5); return; }
    p+=("${r%% *}")
    r=$(cpu /dev/null "$TMP/d.err" "$PRODUCE" --dry-run "$TMP/records.jsonl")
    d+=("${r%% *}")
  done
  log "5: $n records; CPU s: replay->kafka ${k[*]}; replay->/dev/null ${z[*]}; baseline ${p[*]}; baseline dry-run ${d[*]}"
  local ours base ratio
  ours=$(calc "($(echo "${k[*]}" | min_of) - $(echo "${z[*]}" | min_of)) / $n * 1e6")
  base=$(calc "($(echo "${p[*]}" | min_of) - $(echo "${d[*]}" | min_of)) / $n * 1e6")
  ratio=$(calc "$ours / $base")
  log "5: best of each: ours $ours µs, rdkafka $base µs per record; ratio of medians" \
    "$(calc "round(($(echo "${k[*]}" | median_of) - $(echo "${z[*]}" | median_of)) / ($(echo "${p[*]}" | median_of) - $(echo "${d[*]}" | median_of)), 2)")x"
  row "5. Kafka producer CPU per record ($n records)" "$(fmt "$ours" .2f) µs" \
    "$(fmt "$base" .2f) µs (rdkafka alone)" "$(fmt "$ratio" .2f)x" "<= 1.25x" \
    "$(pass_if "$ratio <= 1.25")"
}

# 6 -------------------------------------------------------------------------------------------
# Zero-loss capacity with 2 workers against 1, by the wall clock. The traffic: 100,000
# connections, each a handshake, one exchange with a 300-byte body and FIN (gen_idle.py --close),
# 900,000 datagrams: many connections, as a mirror target aggregates them, so that the flows
# split evenly over the workers (real-load-10k has 10 connections: 40 % / 60 % over two). The
# daemon (unpinned, --workers W, a receive buffer that holds the whole fill) is stopped; one
# sender puts the capture in its sockets' queues (the kernel's steering program spreads it by
# inner flow); the poller continues it and samples its worker threads' CPU time
# (/proc/PID/task/*/schedstat) every 5 ms until none of them has run for 50 ms; rate = datagrams
# / (the last sample in which a worker ran - the continue). Counted only when every datagram was
# processed and none dropped. Best of $SCALE_RUNS for each W, the two in turns.
SCALE_RUNS=${SCALE_RUNS:-5}
SCALE_RECV_BUFFER=536870912
cat > "$TMP/drain_wall.py" <<'EOF'
import os, signal, sys, time
pid = int(sys.argv[1])
def workers():
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().startswith("worker-"):
                out[t] = int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return out
last = workers()
t0 = time.monotonic()
os.kill(pid, signal.SIGCONT)
ran = t0
while time.monotonic() - ran < 0.05:
    time.sleep(0.005)
    now, cur = time.monotonic(), workers()
    # More than 0.2 ms of CPU in 5 ms: working, not waking from a receive timeout.
    if any(cur.get(t, 0) - last.get(t, 0) > 200_000 for t in cur):
        ran = now
    last = cur
print(f"{ran - t0:.6f}")
EOF
scale_trial() { # sets TR_RATE (by the wall clock), TR_PROC, TR_DROPS
  local p0 d0 wall p=0 i
  p0=$(metric mirror_datagrams_total)
  d0=$(metric mirror_kernel_drops_total)
  kill -STOP "$DPID"
  SEND_CAPTURE=$TMP/scale.pcap send_load "$UDP_PORT" 0 1 1
  wall=$(python3 "$TMP/drain_wall.py" "$DPID")
  for i in $(seq 40); do
    sleep 0.5
    p=$(($(metric mirror_datagrams_total) - p0))
    [ "$p" -ge "$SENT" ] && break
  done
  TR_PROC=$p TR_DROPS=$(($(metric mirror_kernel_drops_total) - d0))
  TR_RATE=$(calc "int($SENT / max(1e-9, $wall))")
}
measure_scaling() {
  local w i r1=() r2=() b1 b2
  python3 benches/gen_idle.py --close --conns 100000 --body 300 "$TMP/scale.pcap"
  for i in $(seq "$SCALE_RUNS"); do
    for w in 1 2; do
      start_daemon --workers "$w" --recv-buffer "$SCALE_RECV_BUFFER" || { FAILED+=(6); return; }
      scale_trial
      stop_daemon
      log "6: $w worker(s): $TR_RATE datagrams/s by the wall clock; sent $SENT, processed $TR_PROC, kernel drops $TR_DROPS"
      if [ "$TR_DROPS" = 0 ] && [ "$TR_PROC" = "$SENT" ]; then
        if [ "$w" = 1 ]; then r1+=("$TR_RATE"); else r2+=("$TR_RATE"); fi
      fi
    done
  done
  if [ "${#r1[@]}" = 0 ] || [ "${#r2[@]}" = 0 ]; then
    FAILED+=(6)
    row "6. zero-loss capacity, 2 workers vs 1" "-" "-" "-" "> 1x" "not measured"
    return
  fi
  b1=$(echo "${r1[*]}" | max_of) b2=$(echo "${r2[*]}" | max_of)
  local ratio per16
  ratio=$(calc "$b2 / $b1")
  # 16 vCPUs: 14 workers (two vCPUs left to the NIC's interrupts and the sink), each at the
  # 2-worker rate per worker; the README says what this does not model.
  per16=$(calc "$b2 / 2 * 14")
  log "6: best 1 worker $b1/s, best 2 workers $b2/s (medians $(echo "${r1[*]}" | median_of), $(echo "${r2[*]}" | median_of)); 16-vCPU projection $per16/s"
  row "6. zero-loss capacity by the wall clock, $(fmt "$SENT" ,) queued datagrams of 100,000 connections, 2 workers vs 1" \
    "$(fmt "$b2" ',.0f')/s (2 workers)" "$(fmt "$b1" ',.0f')/s (1 worker)" "$(fmt "$ratio" .2f)x" \
    "> 1x; 16 vCPU: $(fmt "$per16" ',.0f')/s" "$(pass_if "$ratio > 1")"
}

# 7 -------------------------------------------------------------------------------------------
cat > "$TMP/inject.py" <<'EOF'
# inject.py CAPTURE DEV: sends the inner Ethernet frame of every VXLAN datagram of CAPTURE (pcap,
# Ethernet/IPv4/UDP 4789) on DEV through an AF_PACKET socket; prints how many.
import socket, struct, sys, time
data = open(sys.argv[1], "rb").read()
magic = struct.unpack("<I", data[:4])[0]
e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
frames, off = [], 24
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
    pkt = data[off + 16:off + 16 + incl]
    off += 16 + incl
    if len(pkt) < 50 or pkt[12:14] != b"\x08\x00":
        continue
    ihl = (pkt[14] & 15) * 4
    if pkt[23] != 17 or struct.unpack(">H", pkt[14 + ihl + 2:14 + ihl + 4])[0] != 4789:
        continue
    frames.append(pkt[14 + ihl + 16:])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
# In bursts: a veth hands each frame to the per-CPU backlog, which drops past
# net.core.netdev_max_backlog (1000 by default) frames.
for i, f in enumerate(frames):
    s.send(f)
    if i % 200 == 199:
        time.sleep(0.002)
print(len(frames))
EOF
cap_metric() { # NAME: a metric of the capture daemon, read inside the namespace
  ip netns exec "$CAP_NS" curl -sf "http://127.0.0.1:$CAP_ADMIN/metrics" > "$TMP/cm.txt" || true
  metric "$1" "$TMP/cm.txt"
}
cap_quiet() { # PID SECONDS: waits until it has not run for SECONDS (it took what its ring held)
  local a b
  a=$(cpu_ns "$1")
  while :; do
    sleep "$2"
    b=$(cpu_ns "$1")
    [ "$a" = "$b" ] && break
    a=$b
  done
}
capture_trial() { # ours|ref: sets TR_RATE, TR_GOT, TR_DROPS, CAP_SENT
  local pid c0 c1 t0 t1 idle=0 got drops i n sent
  if [ "$1" = ours ]; then
    CAP_ADMIN=$(free_port tcp)
    ip netns exec "$CAP_NS" "${RECV_PIN[@]}" "$BIN" --log-level warn capture --interface lrcb \
      --workers 1 --capture-buffer 268435456 --admin-listen "127.0.0.1:$CAP_ADMIN" \
      --output /dev/null --spool-dir "$TMP/spool" 2>> "$TMP/capture.log" &
    pid=$!
    for i in $(seq 100); do
      ip netns exec "$CAP_NS" curl -sf "http://127.0.0.1:$CAP_ADMIN/metrics" > /dev/null && break
      sleep 0.1
    done
    c0=$(cpu_ns "$pid"); t0=$(date +%s.%N)
    sleep 2
    c1=$(cpu_ns "$pid"); t1=$(date +%s.%N)
    idle=$(calc "($c1 - $c0) / ($t1 - $t0)")
  else
    : > "$TMP/tcpdump.err"
    ip netns exec "$CAP_NS" "${RECV_PIN[@]}" tcpdump -i lrcb -n -B 262144 -w /dev/null \
      2> "$TMP/tcpdump.err" &
    pid=$!
    for i in $(seq 100); do grep -q listening "$TMP/tcpdump.err" && break; sleep 0.1; done
  fi
  PIDS+=("$pid")
  kill -STOP "$pid"
  sent=$(ip netns exec "$CAP_NS" "${SEND_PIN[@]}" python3 "$TMP/inject.py" "$CAPTURE" lrca)
  c0=$(cpu_ns "$pid"); t0=$(date +%s.%N)
  kill -CONT "$pid"
  if [ "$1" = ours ]; then
    for i in $(seq 120); do
      sleep 0.25
      n=$(cap_metric mirror_datagrams_total)
      [ "${n:-0}" -ge "$sent" ] && break
    done
  fi
  # tcpdump's ring hands over a block when it is full or after its 1 s timeout; the daemon is
  # done once it processed them all (it wakes every 20 ms, so it is never quiet).
  [ "$1" = ours ] || cap_quiet "$pid" 1.5
  c1=$(cpu_ns "$pid"); t1=$(date +%s.%N)
  if [ "$1" = ours ]; then
    got=$(cap_metric mirror_capture_frames_total)
    drops=$(cap_metric mirror_capture_ring_drops_total)
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$1" = ref ]; then
    got=$(sed -n 's/^\([0-9]*\) packets captured.*/\1/p' "$TMP/tcpdump.err")
    drops=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$TMP/tcpdump.err")
  fi
  CAP_SENT=$sent
  TR_GOT=${got:-0} TR_DROPS=${drops:-?}
  TR_RATE=$(calc "int($TR_GOT / max(1e-9, ($c1 - $c0 - $idle * ($t1 - $t0)) / 1e9))")
}
measure_capture() {
  if [ "$(id -u)" != 0 ]; then
    log "7: skipped: a network namespace and a veth pair need root"
    row "7. live capture ingest, frames per CPU-second of one core" "-" "-" "-" "reported" "not measured (needs root)"
    return 1
  fi
  local n i o=() r=() bo br
  n=$(nproc)
  if [ "$n" -ge 2 ]; then
    RECV_PIN=(taskset -c $((n - 1)))
    SEND_PIN=(taskset -c "0-$((n - 2))")
  fi
  CAP_NS=lrcap$$
  ip netns add "$CAP_NS"
  ip netns exec "$CAP_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$CAP_NS" link add lrca mtu 9000 type veth peer name lrcb mtu 9000
  ip -n "$CAP_NS" link set lo up
  ip -n "$CAP_NS" link set lrca up
  ip -n "$CAP_NS" link set lrcb up
  for i in $(seq "$INGEST_RUNS"); do
    capture_trial ref
    log "7: tcpdump: $TR_RATE frames per CPU-second; sent $CAP_SENT, captured $TR_GOT, dropped $TR_DROPS"
    if [ "$TR_DROPS" = 0 ] && [ "$TR_GOT" = "$CAP_SENT" ]; then r+=("$TR_RATE"); fi
    capture_trial ours
    log "7: capture: $TR_RATE frames per CPU-second; sent $CAP_SENT, taken $TR_GOT, ring drops $TR_DROPS"
    if [ "$TR_DROPS" = 0 ] && [ "$TR_GOT" = "$CAP_SENT" ]; then o+=("$TR_RATE"); fi
  done
  ip netns delete "$CAP_NS"
  RECV_PIN=()
  SEND_PIN=()
  if [ "${#o[@]}" = 0 ] || [ "${#r[@]}" = 0 ]; then
    row "7. live capture ingest, frames per CPU-second of one core" "-" "-" "-" "reported" "not measured"
    return 1
  fi
  bo=$(echo "${o[*]}" | max_of) br=$(echo "${r[*]}" | max_of)
  log "7: best capture $bo, best tcpdump $br (medians $(echo "${o[*]}" | median_of), $(echo "${r[*]}" | median_of))"
  row "7. live capture ingest without loss (veth, 256 MiB ring), frames per CPU-second of one core" \
    "$(fmt "$bo" ',.0f') (whole pipeline)" "$(fmt "$br" ',.0f') (tcpdump -w /dev/null)" \
    "$(fmt "$(calc "100 * $bo / $br")" .0f) %" "reported" "-"
}

start=$(date +%s)
ONLY=${ONLY:-1 2 3 4 5 6 7}
for m in $ONLY; do
  case $m in
    1) measure_tshark || FAILED+=(1) ;;
    2) measure_ingest || FAILED+=(2) ;;
    3) measure_memory || FAILED+=(3) ;;
    4) measure_accounting || FAILED+=(4) ;;
    5) measure_kafka || FAILED+=(5) ;;
    6) measure_scaling || FAILED+=(6) ;;
    7) measure_capture || FAILED+=(7) ;;
  esac
done

echo
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores," \
  "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r);" \
  "mirror-receiver $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'); $(date -u +%F)"
echo
echo "| measurement | ours | baseline | ratio | target | pass |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "($(($(date +%s) - start)) s)"
if [ "${#FAILED[@]}" -gt 0 ]; then
  log "not measured: rows ${FAILED[*]}"
  exit 1
fi
