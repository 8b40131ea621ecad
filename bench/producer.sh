#!/usr/bin/env bash
# Producer benchmark: simulator speed, maximum produce rate with CPU per event, and rate
# accuracy at 100, 1,000 and 10,000 events/s, measured from the broker's side (message
# timestamps of everything consumed back). Writes bench/results/producer.json.
#
#   bench/producer.sh
#
# Uses the broker in KAFKA_BROKERS if set; otherwise starts a private local stack (scripts/stack)
# on STACK_KAFKA_PORT (default 29192) and stops it at the end.
# Settings (environment): BENCH_SECONDS (60) per accuracy run, BENCH_RATES ("100 1000 10000"),
# BENCH_MAX_COUNT (1000000) messages for the maximum-rate run, CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_PER_RATE=${BENCH_SECONDS:-60}
RATES=${BENCH_RATES:-"100 1000 10000"}
MAX_COUNT=${BENCH_MAX_COUNT:-1000000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT="$ROOT/bench/results/producer.json"
WORK=$(mktemp -d)
say() { echo "bench: $*" >&2; }

say "building release binaries"
cargo build --release -p clickstream-producer --bins --examples >&2
BIN="$TARGET/release/clickstream-producer"
EXAMPLES="$TARGET/release/examples"

STARTED_STACK=""
cleanup() {
  if [ -n "$STARTED_STACK" ]; then scripts/stack down >&2 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ -z "${KAFKA_BROKERS:-}" ]; then
  export STACK_KAFKA_PORT=${STACK_KAFKA_PORT:-29192}
  export STACK_CLICKHOUSE_PORT=${STACK_CLICKHOUSE_PORT:-28223}
  export STACK_DATA_DIR=${STACK_DATA_DIR:-/tmp/stack-bench-producer}
  eval "$(scripts/stack up)"
  STARTED_STACK=1
fi
say "broker $KAFKA_BROKERS"
RUN_ID=$(date +%s)

# Runs the producer with the given flags; writes $1.json (summary), $1.log, $1.cpu (user sys).
produce() {
  local name=$1; shift
  local TIMEFORMAT='%U %S'
  { time "$BIN" --brokers "$KAFKA_BROKERS" --seed 42 "$@" >"$WORK/$name.json" 2>"$WORK/$name.log" ; } 2>"$WORK/$name.cpu" \
    || { say "producer run $name failed:"; tail -20 "$WORK/$name.log" >&2; exit 1; }
}

say "simulator throughput (single thread)"
"$EXAMPLES/bench_simulator" 2000000 >"$WORK/simulator.json"
cat "$WORK/simulator.json" >&2

say "maximum rate: $MAX_COUNT messages at --rate max"
produce max --topic "bench-max-$RUN_ID" --rate max --count "$MAX_COUNT"
cat "$WORK/max.json" >&2

for rate in $RATES; do
  say "rate $rate/s for ${SECONDS_PER_RATE}s"
  produce "rate-$rate" --topic "bench-rate-$rate-$RUN_ID" --rate "$rate" --duration "${SECONDS_PER_RATE}s"
  delivered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["delivered"])' "$WORK/rate-$rate.json")
  "$EXAMPLES/rate_check" "$KAFKA_BROKERS" "bench-rate-$rate-$RUN_ID" "$delivered" "$rate" >"$WORK/check-$rate.json"
  cat "$WORK/check-$rate.json" >&2
done

python3 - "$WORK" "$OUT" "$RATES" <<'PY'
import json, os, platform, subprocess, sys, datetime
work, out, rates = sys.argv[1], sys.argv[2], sys.argv[3].split()
def load(name): return json.load(open(os.path.join(work, name)))
def cpu(name):
    user, system = open(os.path.join(work, name)).read().split()[-2:]
    return float(user) + float(system)
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
maximum = load("max.json")
max_cpu = cpu("max.cpu")
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cpus": os.cpu_count(), "cpu": cpu_model, "load_avg_at_end": os.getloadavg(),
                "note": "broker (tansu, in-memory) and producer share this machine"},
    "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "simulator": load("simulator.json"),
    "max_rate": {
        "messages": maximum["sent"], "delivered": maximum["delivered"], "failed": maximum["failed"],
        "send_s": round(maximum["elapsed_s"], 3), "flush_s": round(maximum["flush_s"], 3),
        "enqueued_per_s": round(maximum["rate_per_s"]),
        # Until the last acknowledgement: the rate the broker actually took them at.
        "delivered_per_s": round(maximum["delivered"] / (maximum["elapsed_s"] + maximum["flush_s"])),
        "cpu_s": max_cpu, "cpu_us_per_event": round(max_cpu / maximum["sent"] * 1e6, 2),
        "per_partition": maximum["per_partition"],
    },
    "rate_accuracy": [],
}
for rate in rates:
    summary, check = load(f"rate-{rate}.json"), load(f"check-{rate}.json")
    c = cpu(f"rate-{rate}.cpu")
    result["rate_accuracy"].append({
        **check, "delivered": summary["delivered"], "failed": summary["failed"],
        "producer_reported_per_s": round(summary["rate_per_s"], 2),
        "cpu_s": c, "cpu_us_per_event": round(c / max(summary["sent"], 1) * 1e6, 2),
    })
json.dump(result, open(out, "w"), indent=2)
open(out, "a").write("\n")
print(json.dumps(result, indent=2))
PY
say "wrote $OUT"
