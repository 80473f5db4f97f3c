"""The inference gateway's clients send `Request-Id`; it is kept like `X-Request-ID` (which wins)."""

from app import create_app
from app.config import Config


def test_request_id_alias_is_kept_and_x_request_id_wins():
    client = create_app(Config()).test_client()
    assert client.get("/healthz", headers={"Request-Id": "abc-1"}).headers["X-Request-ID"] == "abc-1"
    both = client.get("/healthz", headers={"Request-Id": "abc-1", "X-Request-ID": "x-2"})
    assert both.headers["X-Request-ID"] == "x-2"
    insane = client.get("/healthz", headers={"Request-Id": "a b\tc"}).headers["X-Request-ID"]
    assert insane != "a b\tc" and len(insane) == 36  # a fresh UUID4
