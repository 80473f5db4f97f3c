"""The naive relay of /work/shared/reference/baseline.md: the floor cot-proxy must beat.

    NAIVE_UPSTREAM=http://127.0.0.1:18000/v1 python -m gunicorn -k gevent -w 2 \
        -b 127.0.0.1:18100 --chdir bench naive_relay:app
"""

import os

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ["NAIVE_UPSTREAM"].rstrip("/")
HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}
session = requests.Session()
session.trust_env = False  # proxy settings are not looked up per request
app = Flask(__name__)


@app.route("/v1/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def relay(path: str) -> Response:
    headers = {k: v for k, v in request.headers if k.lower() not in HOP}
    up = session.request(
        request.method,
        f"{UPSTREAM}/{path}",
        params=request.args,
        data=request.get_data(),
        headers=headers,
        stream=True,
        timeout=(5, 300),
    )
    out = [(k, v) for k, v in up.headers.items() if k.lower() not in HOP]
    if up.headers.get("Content-Type", "").startswith("text/event-stream"):

        def events():
            try:
                yield from up.iter_content(None)
            finally:
                up.close()

        return Response(events(), status=up.status_code, headers=out)
    body = up.content
    up.close()
    return Response(body, status=up.status_code, headers=out)
