#!/usr/bin/env bash
# RSS of an agent before and after trainings (docs/BENCHMARKS.md, training cost): 86,400 samples of
# 17 metrics over the last 24 h pushed over HTTP, then `augur models train` N times (default 3).
#     cargo build --release -p augur-agent && BIN=target/release/augur N=6 tests/rss-after-training.sh
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/augur}
D=$(mktemp -d)
$BIN agent --data-dir $D --http-addr 127.0.0.1:17070 --grpc-addr 127.0.0.1:17071 > $D/log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for i in $(seq 50); do curl -sf http://127.0.0.1:17070/v1/health >/dev/null 2>&1 && break; sleep 0.2; done
python3 - <<'PY'
import json, random, time, urllib.request
random.seed(3)
now = time.time()
start = now - 86400
batch = []
def flush():
    global batch
    body = "\n".join(json.dumps(r) for r in batch).encode()
    req = urllib.request.Request("http://127.0.0.1:17070/v1/telemetry", data=body, headers={"content-type": "application/x-ndjson"})
    urllib.request.urlopen(req).read()
    batch = []
for t in range(86400):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + t)) + "Z"
    m = {f"m{k}": random.random() * (k + 1) for k in range(15)}
    m["mem_used_ratio"] = 0.4 + 0.1 * random.random()
    m["error_rate"] = 0.01 * random.random()
    batch.append({"ts": ts, "resource_id": "svc-1", "resource_type": "service", "metrics": m})
    if len(batch) == 1000:
        flush()
if batch: flush()
PY
rss() { grep VmRSS /proc/$PID/status | awk '{print $2/1024 " MB"}'; }
echo "before training: $(rss)"
for i in $(seq ${N:-3}); do
  $BIN models train --api http://127.0.0.1:17070 > /dev/null
  echo "after training $i: $(rss)"
done
grep VmHWM /proc/$PID/status
