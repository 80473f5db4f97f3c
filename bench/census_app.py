"""bench/stream_memory.py's census: the naive relay or cot-proxy, wrapped to count its open streams and to look
at its own memory when CENSUS_STREAMS of them are open at once. Runs in one Gunicorn gevent worker.

    GET /__census/base    baseline: gc, tracemalloc started, RSS read (after the warm-up)
    GET /__census/result  the census (JSON; 404 until taken)
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from typing import Any

import gevent
import greenlet

if os.environ["CENSUS_APP"] == "naive":
    from naive_relay import app as inner
else:
    from cot_proxy import app as inner

WANT = int(os.environ["CENSUS_STREAMS"])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
state: dict[str, Any] = {"open": 0, "base": None, "result": None}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _name(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/")[-1]
    return filename.replace(REPO + "/", "").replace(os.path.dirname(os.__file__) + "/", "stdlib/")


def _census() -> None:
    gc.collect()
    snap = tracemalloc.take_snapshot()
    lets = [o for o in gc.get_objects() if isinstance(o, greenlet.greenlet)]
    by_file: dict[str, int] = {}
    group = os.environ.get("CENSUS_GROUP", "filename")
    for stat in snap.compare_to(state["base"][1], group):
        frame = stat.traceback[0]
        name = _name(frame.filename) + (f":{frame.lineno}" if group != "filename" else "")
        if group == "traceback":
            name = " <- ".join(f"{_name(f.filename)}:{f.lineno}" for f in stat.traceback)
        by_file[name] = by_file.get(name, 0) + stat.size_diff
    state["result"] = {
        "streams_open": state["open"],
        "greenlets": len(lets),
        "stack_saved_kib": round(sum(g._stack_saved for g in lets) / 1024, 1),
        "python_kib": round(sum(by_file.values()) / 1024, 1),
        "rss_kib": _rss_kb() - state["base"][0],
        "top_files_kib": [(f, round(v / 1024, 1)) for f, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:12]],
    }


def _control(path: str, start_response: Any) -> list[bytes]:
    if path == "/__census/base":
        gc.collect()
        tracemalloc.start(int(os.environ.get("CENSUS_FRAMES", "1")))
        state["base"] = (_rss_kb(), tracemalloc.take_snapshot())
        body, status = b"{}", "200 OK"
    elif state["result"] is not None:
        body, status = json.dumps(state["result"]).encode(), "200 OK"
    else:
        body, status = b"{}", "404 Not Found"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/__census/"):
        return _control(path, start_response)
    return _counted(inner(environ, start_response))


def _counted(body: Any) -> Any:
    first = True
    try:
        for chunk in body:
            yield chunk
            if first:
                first = False
                state["open"] += 1
                if state["base"] is not None and state["result"] is None and state["open"] >= WANT:
                    gevent.spawn(_census)
    finally:
        if not first:
            state["open"] -= 1
        close = getattr(body, "close", None)
        if close is not None:
            close()
