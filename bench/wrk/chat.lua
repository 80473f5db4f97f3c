-- bench/wrk/chat.lua: the ~1 KB non-streamed chat POST of bench/run.py (CHAT_BODY), for wrk.
--   wrk -t1 -c1 -d8s --latency -s bench/wrk/chat.lua http://127.0.0.1:PORT/v1/chat/completions
-- done() prints one line `WRK_RESULT {json}`: exact p50/p99 (microseconds), counts and errors
-- (`status` = answers with status > 399, which wrk also reports as "Non-2xx or 3xx responses").

function chat_body(extra)
  local words = {}
  for i = 0, 129 do words[#words + 1] = "word" .. i end
  return '{"model":"bench-model","messages":[' ..
    '{"role":"system","content":"You are a concise assistant used for benchmarking."},' ..
    '{"role":"user","content":"' .. table.concat(words, " ") .. '"}],' ..
    '"temperature":0.2,"max_tokens":256' .. (extra or "") .. '}'
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = chat_body()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
