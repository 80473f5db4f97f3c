-- bench/wrk/chat_stream.lua: the same chat POST with "stream": true, "bench_chunks": 20
-- (the fake upstream answers 20 SSE chunks and `data: [DONE]` with no pause). Same done() line.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "chat.lua")
wrk.body = chat_body(',"stream":true,"bench_chunks":20')
