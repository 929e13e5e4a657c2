#!/usr/bin/env bash
# make demo: start the mock server on loopback, run a sample job through batchproc,
# show where the answers are, stop the server, write the run's report. No key needed, no network beyond loopback.
set -euo pipefail
BIN=${1:-.venv/bin}
PORT=${2:-auto}
JOB=${3:-sample_jobs/chat.jsonl}
shift 3 || true
OUT=demo-out
mkdir -p "$OUT"
if [ "$PORT" = auto ]; then
    PORT=$("$BIN/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
fi
name=$(basename "$JOB" .jsonl)
rm -f "$OUT/$name.results.jsonl" "$OUT/$name.errors.jsonl" "$OUT/$name.results.jsonl.ledger" \
    "$OUT/$name.run.jsonl" "$OUT/$name.report.html"

"$BIN/batchproc" mock-server --port "$PORT" --rpm 600 --tpm 60000 --latency-ms 80 \
    --latency-jitter-ms 40 --fail-500 0.05 --seed 1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

# Wait (bounded) until the server accepts connections.
for _ in $(seq 1 100); do
    if "$BIN/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

echo "== batchproc $JOB --rpm 500 --tpm 30000 (against the mock server on 127.0.0.1:$PORT)"
status=0
OPENAI_API_KEY=${OPENAI_API_KEY:-sk-demo-not-a-real-key} "$BIN/batchproc" "$JOB" \
    --base-url "http://127.0.0.1:$PORT/v1" --rpm 500 --tpm 30000 \
    --output "$OUT/$name.results.jsonl" --errors "$OUT/$name.errors.jsonl" "$@" || status=$?

echo
echo "== answers: $OUT/$name.results.jsonl ($(wc -l < "$OUT/$name.results.jsonl") lines); the first two:"
head -n 2 "$OUT/$name.results.jsonl" | "$BIN/python" -c '
import sys, orjson
for line in sys.stdin:
    r = orjson.loads(line)
    body = r["response"]["body"]
    text = body.get("choices", [{}])[0].get("message", {}).get("content") if "choices" in body else body.get("object")
    print("  " + r["custom_id"] + ": " + str(text))
'
if [ -s "$OUT/$name.errors.jsonl" ]; then
    echo "== failures: $OUT/$name.errors.jsonl ($(wc -l < "$OUT/$name.errors.jsonl") lines)"
fi

echo
echo "== batchproc report $OUT/$name.run.jsonl --summary"
"$BIN/batchproc" report "$OUT/$name.run.jsonl" --output "$OUT/$name.report.html" --summary
echo "report: $(cd "$OUT" && pwd)/$name.report.html (open it in a browser)"
exit $status
