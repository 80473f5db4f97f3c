"""Hypothesis property tests of the proxy's own surface, beyond what the OpenAPI document says.

Every test sends what no schema would generate (any JSON value in any field, nesting hundreds of
levels deep, huge numbers, control and non-Latin-1 characters, raw bytes, hostile headers, paths
and credentials) to every target (echo, proxy, auth, routed: see conftest.py) and checks the
invariants of support.py. Some also check what must come back:
- a 400 from validation names the field: `param` starts with the field that was replaced;
- valid OpenAI requests, with unknown fields of any JSON value, are accepted (200);
- a body nested past the relay's limit is a 400, one well within it is accepted.

Derandomized, with a fixed number of examples per test (times FUZZ_SCALE).
"""

from __future__ import annotations

import re
import traceback
import warnings
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import jwt
import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app import create_app
from tests.fuzz import strategies as S
from tests.fuzz import support
from tests.fuzz.support import CASES, DERANDOMIZE, KNOWN_SEEN, Target, examples

TARGETS = ("echo", "proxy", "auth", "routed")
BODY_CODES = frozenset({"invalid_json", "invalid_content_type", "invalid_body", "invalid_path", "request_too_large"})
"""Errors about the body or request as a whole, not one field (so no `param`)."""
AUTH = {"Authorization": f"Bearer {support.TOKEN}"}


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=examples(n),
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class Sender:
    """Sends one request to a target's app and checks the invariants; unknown failures raise."""

    def __init__(self, request: pytest.FixtureRequest, target: Target) -> None:
        self.nodeid = request.node.nodeid
        self.target = target
        self.client = target.app.test_client()

    def __call__(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        query: dict[str, str] | None = None,
        body: Any = None,
        auth: bool = True,
        raw_target: str | None = None,
    ) -> tuple[int, Any, bytes]:
        """`raw_target`: the request target exactly as a client sent it (PATH_INFO is what a server
        decodes from it), for paths the test client would misread (`//host`)."""
        CASES[self.nodeid] += 1
        self.known: support.Known | None = None
        headers = dict(headers or {})
        if auth and self.target.name == "auth":
            headers = {**AUTH, **headers}
        sent = support.Sent(
            self.target.name, method, raw_target or path, query or {}, headers, body if data is None else data
        )
        environ = None
        if raw_target is not None:
            environ = {
                "PATH_INFO": unquote_to_bytes(raw_target).decode("latin-1"),
                "RAW_URI": raw_target,
                "REQUEST_URI": raw_target,
            }
        with support.ErrorLog() as log:
            try:
                r = self.client.open(
                    path, method=method, headers=headers, data=data, query_string=query, environ_overrides=environ
                )
                content = r.get_data()  # a streamed body is read to its end here
            except Exception:
                raise AssertionError(
                    f"request failed in the proxy:\n{traceback.format_exc()}\n{support.curl(sent)}"
                ) from None
            found = support.problems(r.status_code, r.headers, content, method)
            if found:
                self.known = support.known_failure(sent, found)
                if self.known is None:
                    raise AssertionError("\n".join(found) + f"\n{support.curl(sent)}\nproxy log: {log.last()}")
                KNOWN_SEEN[self.known.name] += 1
        return r.status_code, r.headers, content

    def json(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, bytes]:
        return self(
            "POST",
            path,
            headers={"Content-Type": "application/json", **kw.pop("headers", {})},
            data=S.encode(body),
            body=body,
            **kw,
        )


@pytest.fixture(params=TARGETS)
def send(request: pytest.FixtureRequest, targets: dict[str, Target]) -> Sender:
    return Sender(request, targets[request.param])


def _error(content: bytes) -> dict[str, Any]:
    import orjson

    return orjson.loads(content)["error"]


def _top(param: str) -> str:
    return re.split(r"[.\[]", param, maxsplit=1)[0]


# -- bodies ------------------------------------------------------------------------------

replacements = st.one_of(
    st.just(S.DELETE),
    S.json_values,
    st.builds(S.nested, st.integers(1, 300), st.sampled_from(["list", "dict"])),
)


@pytest.mark.parametrize("family", list(S.FAMILIES))
def test_any_value_in_any_field(send: Sender, family: str) -> None:
    """One field of a valid body replaced by any JSON value (or removed): never a proxy error,
    and a 400 from validation names that field."""
    path, base, fields = S.FAMILIES[family]

    @fuzz_settings(120)
    @given(field=st.sampled_from(fields), value=replacements, stream=st.booleans())
    def check(field: tuple[Any, ...], value: Any, stream: bool) -> None:
        body = S.set_path(base, field, value)
        if stream and field != ("stream",) and family in ("chat", "completions"):
            body["stream"] = True
        status, headers, content = send.json(path, body)
        if status == 400 and not support.is_relayed(headers):
            error = _error(content)
            if error["code"] not in BODY_CODES:
                param = error["param"]
                assert isinstance(param, str) and param, error
                assert _top(param) == field[0], (field, error)

    check()


VALID = {"chat": S.valid_chat(), "completions": S.valid_completions(), "embeddings": S.valid_embeddings()}


@pytest.mark.parametrize("family", list(VALID))
def test_valid_requests_are_accepted(send: Sender, family: str) -> None:
    """Permissive: any valid OpenAI request, with unknown fields holding any JSON value, gets 200."""
    path = S.FAMILIES[family][0]

    @fuzz_settings(60)
    @given(body=VALID[family])
    def check(body: dict[str, Any]) -> None:
        status, _, content = send.json(path, body)
        assert status == 200, content[:500]

    check()


@pytest.mark.parametrize("family", ["chat", "embeddings", "rerank", "video"])
def test_deep_nesting(send: Sender, family: str) -> None:
    """Nesting far past what orjson writes (254) is a 400; well within the limits it is accepted."""
    path, base, _ = S.FAMILIES[family]

    @fuzz_settings(40)
    @given(depth=st.integers(1, 600), kind=st.sampled_from(["list", "dict"]))
    def check(depth: int, kind: str) -> None:
        status, _, content = send.json(path, {**base, "x-deep": S.nested(depth, kind)})
        if depth <= 60:
            assert status == 200 or (status == 404 and send.target.name == "echo"), content[:300]
        elif depth >= 254:
            assert status == 400, content[:300]

    check()


RAW_ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/video/pipeline/generations",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/v1/files",
]
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(S.encode, S.json_values),
    st.sampled_from(
        [
            b"",
            b"{",
            b"[]",
            b"null",
            b"1",
            b'"x"',
            b"NaN",
            b'{"a": NaN}',
            b'{"a": 1e400}',
            b'{"model": "\\ud800"}',
            b'{"a": 1}{"b": 2}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}  ',
            b'--zz\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--zz--\r\n',
            b"model=a&model=b",
            b"model=%ff",
        ]
    ),
)
content_types = st.one_of(
    st.none(),
    S.header_values,
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "multipart/form-data; boundary=zz",
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/octet-stream",
        ]
    ),
)


def test_raw_bodies(send: Sender) -> None:
    """Any bytes under any Content-Type, on every family."""

    @fuzz_settings(200)
    @given(route=st.sampled_from(RAW_ROUTES), data=raw_bodies, content_type=content_types)
    def check(route: str, data: bytes, content_type: str | None) -> None:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        send("POST", route, headers=headers, data=data)

    check()


# -- headers, paths, methods ------------------------------------------------------------------

HEADER_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/m"),
    ("POST", "/v1/images/generations"),
    ("GET", "/v1/usage"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/metadata"),
    ("GET", "/openapi.json"),
    ("DELETE", "/v1/files/x"),
    ("OPTIONS", "/v1/chat/completions"),
    ("HEAD", "/v1/models"),
]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def test_headers(send: Sender) -> None:
    """Every header the proxy reads, with any value a server lets through; X-Request-ID comes back
    only when sane."""

    @fuzz_settings(250)
    @given(
        route=st.sampled_from(HEADER_ROUTES),
        headers=st.dictionaries(S.header_names, S.header_values, min_size=1, max_size=4),
        stream=st.booleans(),
    )
    def check(route: tuple[str, str], headers: dict[str, str], stream: bool) -> None:
        method, path = route
        data = None
        if method == "POST":
            headers.setdefault("Content-Type", "application/json")
            data = S.encode(
                {**CHAT, "stream": stream}
                if path == "/v1/chat/completions"
                else {"model": "m", "input": "x", "prompt": "p"}
            )
        status, resp_headers, _ = send(method, path, headers=headers, data=data, auth=False)
        given_id = next((v for k, v in headers.items() if k.lower() == "x-request-id"), "")
        returned = resp_headers.get("X-Request-ID")
        assert returned, "every response has an X-Request-ID"
        if _SANE_ID.match(given_id):
            assert returned == given_id
        else:
            assert _SANE_ID.match(returned) and returned != given_id

    check()


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
segments = st.one_of(
    S.texts,
    st.sampled_from(
        [
            "..",
            ".",
            "",
            "%2e%2e",
            "%2F",
            "%5c",
            "%00",
            "%0a",
            "chat",
            "completions",
            "models",
            "usage",
            "metadata",
            "audio",
            "images",
            "video",
            "pipeline",
            "generations",
            "status",
        ]
    ),
)


def test_paths_and_methods(send: Sender) -> None:
    """Any path (raw or percent-encoded segments, dot and empty segments, controls) and any method."""

    @fuzz_settings(200)
    @given(
        method=st.sampled_from(METHODS),
        parts=st.lists(segments, max_size=4),
        encode=st.booleans(),
        prefix=st.sampled_from(["/v1/", "/", "/v1//", "/V1/", "//v1/"]),
    )
    def check(method: str, parts: list[str], encode: bool, prefix: str) -> None:
        # What a client puts in the request line: ASCII, anything else percent-encoded.
        target = prefix + "/".join(quote(p, safe="%" if encode else "%/\\.:@!$&'()*+,;=") for p in parts)
        data = S.encode(CHAT) if method in ("POST", "PUT", "PATCH") else None
        send(method, "/", raw_target=target, headers={"Content-Type": "application/json"} if data else {}, data=data)

    check()


# -- credentials and the admin endpoint ------------------------------------------------------

claims = st.dictionaries(
    st.sampled_from(
        ["sub", "exp", "nbf", "iat", "aud", "iss", "models", "rpm", "tpm", "budget", "concurrency", "name", "jti"]
    )
    | S.texts,
    S.json_values,
    max_size=6,
)


@st.composite
def credentials(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["token", "key", "jwt", "jwt-other-key", "raw"]))
    if kind == "token":
        return draw(st.sampled_from([support.TOKEN, support.TOKEN + "x", support.TOKEN[:-1], support.ADMIN_TOKEN]))
    if kind == "key":
        return "sk-cp-" + draw(st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=60))
    if kind.startswith("jwt"):
        secret = support.JWT_SECRET if kind == "jwt" else "another-secret-of-at-least-32-bytes!!"
        payload = draw(claims)
        try:
            with warnings.catch_warnings():  # HS512 with a short key: on purpose
                warnings.simplefilter("ignore")
                return jwt.encode(payload, secret, algorithm=draw(st.sampled_from(["HS256", "HS512", "none"])))
        except Exception:  # claims pyjwt itself refuses to write
            return jwt.encode({"sub": "x"}, secret, algorithm="HS256")
    return draw(S.header_values)


def test_credentials(request: pytest.FixtureRequest, targets: dict[str, Target]) -> None:
    """With authentication on: fixed tokens, virtual keys (looked up in SQLite), JWTs signed with the
    right key and arbitrary claims, or anything else: 200, 401, 403 or 429, never an error of ours."""
    send = Sender(request, targets["auth"])

    @fuzz_settings(200)
    @given(
        credential=credentials(),
        scheme=st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "", "Basic "]),
        route=st.sampled_from(
            [
                ("POST", "/v1/chat/completions"),
                ("GET", "/v1/models"),
                ("GET", "/v1/usage"),
                ("POST", "/v1/audio/transcriptions"),
            ]
        ),
    )
    def check(credential: str, scheme: str, route: tuple[str, str]) -> None:
        method, path = route
        headers = {"Authorization": scheme + credential, "Content-Type": "application/json"}
        status, _, _ = send(
            method, path, headers=headers, auth=False, data=S.encode(CHAT) if method == "POST" else None
        )
        assert status in (200, 400, 401, 403, 404, 429), status

    check()


instants = st.one_of(
    S.texts,
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(
        lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
        st.datetimes(),
        st.integers(-1439, 1439),
    ),
    st.sampled_from(
        [
            "0",
            "1.5",
            "99999999999",
            "9" * 30,
            "1e5",
            "-1",
            " 1 ",
            "2024-01-01",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00+25:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "\x00",
            "²",
            "",
        ]
    ),
)
usage_keys = st.one_of(S.texts, st.sampled_from(["", "\x00", "a\x00b", "%", "_", "'", "key' OR '1'='1"]))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_usage_query(request: pytest.FixtureRequest, fuzz_upstream: Any, tmp_path: Any, database: str) -> None:
    """GET /v1/usage with any key, since and until, on both key stores."""
    url = f"sqlite:///{tmp_path / 'usage.db'}" if database == "sqlite" else request.getfixturevalue("postgresql_url")
    app: Flask = create_app(support.auth_config(fuzz_upstream, url))
    send = Sender(request, Target(f"auth-{database}", app))
    admin = {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}
    try:

        @fuzz_settings(150)
        @example(query={"since": "0001-01-01T00:00:00+01:00"})  # the known failures, always tried
        @example(query={"key": "\x00"})
        @given(query=st.fixed_dictionaries({}, optional={"key": usage_keys, "since": instants, "until": instants}))
        def check(query: dict[str, str]) -> None:
            status, _, content = send("GET", "/v1/usage", headers=admin, query=query, auth=False)
            assert send.known or status in (200, 400), content[:300]

        check()
    finally:
        support.close_apps(app)
