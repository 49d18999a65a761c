#!/usr/bin/env bash
# Issue 10, finding 7: an agent pushed samples that each name 256 new metrics (three pushes of about
# 3 MB, 200 samples each, as the finding reproduced it). Prints the agent's RSS after the pushes and
# after a minute for the prediction stage to digest them, what was refused, the engines' estimated
# memory, and the size of the saved engine state after a clean stop.
#     cargo build --release -p augur-agent && BIN=target/release/augur tests/rss-metric-names.sh
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/augur}
D=$(mktemp -d)
$BIN agent --data-dir $D --http-addr 127.0.0.1:17080 --grpc-addr 127.0.0.1:17081 > $D/log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for i in $(seq 100); do curl -sf http://127.0.0.1:17080/healthz >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$PID/status; }
echo "RSS at start: $(rss)"
python3 - <<'PY'
import json, time, urllib.request
now = time.time()
name = 0
for push in range(3):
    batch = []
    for s in range(200):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 900 + push * 200 + s)) + "Z"
        m = {}
        for k in range(256):
            m[f"metric_with_a_rather_long_generated_name_{name:08d}"] = float(k)
            name += 1
        batch.append({"ts": ts, "resource_id": "svc-names", "resource_type": "service", "metrics": m})
    body = "\n".join(json.dumps(r) for r in batch).encode()
    req = urllib.request.Request("http://127.0.0.1:17080/v1/telemetry", data=body)
    try:
        r = urllib.request.urlopen(req)
        code, out = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        code, out = e.code, json.loads(e.read())
    print(f"push {push + 1}: {len(body) / 1e6:.1f} MB, HTTP {code}, accepted {out.get('accepted')}, rejected {out.get('rejected')}")
PY
echo "RSS after the pushes: $(rss)"
sleep 60
echo "RSS a minute later: $(rss)"
curl -s http://127.0.0.1:17080/metrics | grep -E '^augur_(predict_engine_bytes|predict_refused_total|samples_rejected_total\{source="http",reason="too_many_metrics"\})'
kill -TERM $PID; wait $PID || true
echo "saved engine state: $(du -h $D/models/engines.cbor 2>/dev/null | cut -f1)"
