#!/usr/bin/env bash
# A non-streaming chat completion through cot-proxy (the LLM gateway's non_streaming_request.sh).
#
#   ./examples/chat.sh                          # "Hello!" to gpt-4o-mini at http://localhost:5000
#   ./examples/chat.sh "Tell me a joke"         # your own prompt
#   BASE_URL=http://localhost:8080 MODEL=openai/gpt-4o API_KEY=sk-... ./examples/chat.sh
#
# BASE_URL is the proxy (no /v1); MODEL may be provider/model or an alias from config.yaml;
# API_KEY, if set, is sent as Authorization: Bearer (GATEWAY_BEARER_TOKEN, a virtual key, a JWT).
# Prints the answer's JSON; exits non-zero (after printing the error body) on an HTTP error.
set -euo pipefail

BASE_URL="${BASE_URL:-http://localhost:5000}"
MODEL="${MODEL:-gpt-4o-mini}"
PROMPT="${1:-Hello!}"

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

curl -sS --fail-with-body "${BASE_URL%/}/v1/chat/completions" \
  -H "Content-Type: application/json" \
  ${auth[@]+"${auth[@]}"} \
  -d "{\"model\": $(json_string "$MODEL"), \"messages\": [{\"role\": \"user\", \"content\": $(json_string "$PROMPT")}]}"
echo
