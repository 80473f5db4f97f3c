#!/usr/bin/env bash
# A streaming chat completion through cot-proxy (the LLM gateway's streaming_request.sh).
# -N turns off curl's buffering: each SSE event prints the moment the proxy relays it.
#
#   ./examples/stream.sh                        # "Tell me a long joke about a programmer."
#   ./examples/stream.sh "Count to ten"
#   BASE_URL=http://localhost:8080 MODEL=fast API_KEY=sk-... ./examples/stream.sh
#
# Same variables as chat.sh. Prints the raw `data: {...}` events, ending with `data: [DONE]`.
set -euo pipefail

BASE_URL="${BASE_URL:-http://localhost:5000}"
MODEL="${MODEL:-gpt-4o-mini}"
PROMPT="${1:-Tell me a long joke about a programmer.}"

json_string() {  # $1 as a JSON string literal (backslash, quote and control characters escaped)
  local s="$1"
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"; s="${s//$'\r'/\\r}"; s="${s//$'\t'/\\t}"
  printf '"%s"' "$s"
}

auth=()
if [ -n "${API_KEY:-}" ]; then
  auth=(-H "Authorization: Bearer ${API_KEY}")
fi

curl -sS -N --fail-with-body "${BASE_URL%/}/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -H "Accept: text/event-stream" \
  ${auth[@]+"${auth[@]}"} \
  -d "{\"model\": $(json_string "$MODEL"), \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": $(json_string "$PROMPT")}]}"
