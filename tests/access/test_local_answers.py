"""Answers the proxy makes itself (echo mode) carry the same rate-limit headers as relayed ones."""

import time

import jwt

from app import create_app
from app.config import Config

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-32"


def test_echo_answers_carry_rate_limit_headers():
    client = create_app(Config.from_env({"JWT_SECRET": SECRET})).test_client()
    token = jwt.encode({"sub": "team-a", "rpm": 5, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.get_json()["model"] == "echo"
    assert resp.headers["x-ratelimit-limit-requests"] == "5"
    assert resp.headers["x-ratelimit-remaining-requests"] == "4"
