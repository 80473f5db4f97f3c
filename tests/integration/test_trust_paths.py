"""Path confinement, through real Gunicorn, against a two-tenant upstream that records raw request lines.

The proxy's upstream is tenant A (`/tenant-a/v1/`, key `sk-tenant-a`); tenant B lives on the same
server (`/tenant-b/...`) and, like most servers, that upstream resolves dot segments, encoded slashes
and backslashes. A client path with dot segments (raw or percent-encoded), encoded slashes,
backslashes or empty segments gets 400 `invalid_path` on every route and method, in target,
provider and Livepeer mode, and the upstream receives nothing at all. Requests go out on raw
sockets: `requests` and `http.client` would normalise some of these paths before sending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest

from tests.fakes.hostile_upstream import TENANT_B_SECRET, HostileUpstream
from tests.support import Gunicorn, raw_request

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TENANT_A_KEY = "sk-tenant-a"

# Every family of route the proxy serves, and probes.
ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/fake-model",
    "/v1/files/file-1",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/v1/rerank",
    "/v1/video/generations",
    "/v1/metadata",
    "/healthz",
    "/health",
)


def _split(path: str) -> tuple[str, str]:
    """('/v1', '/chat/completions') or ('/healthz', '')."""
    i = path.find("/", 1)
    return (path, "") if i < 0 else (path[:i], path[i:])


def _spell(make: Callable[[str, str, str], str]) -> Callable[[str], str]:
    def spelled(path: str) -> str:
        lead, rest = _split(path)
        return make(path, lead, rest)

    return spelled


# Each turns a route's path into a hostile spelling of it (most also climb out to tenant B).
SPELLINGS: dict[str, Callable[[str], str]] = {
    "dotdot": _spell(lambda p, lead, rest: f"{lead}/../../tenant-b{p}"),
    "dotdot-inside": _spell(lambda p, lead, rest: f"{lead}/x/..{rest}"),
    "trailing-dotdot": _spell(lambda p, lead, rest: f"{p}/../../../../../../tenant-b/v1/models"),
    "dot": _spell(lambda p, lead, rest: f"{lead}/.{rest}"),
    "trailing-dot": _spell(lambda p, lead, rest: f"{p}/."),
    "%2e%2e": _spell(lambda p, lead, rest: f"{lead}/%2e%2e/%2e%2e/tenant-b{p}"),
    "%2E%2e": _spell(lambda p, lead, rest: f"{lead}/%2E%2e/%2E%2e/tenant-b{p}"),
    ".%2e": _spell(lambda p, lead, rest: f"{lead}/.%2e/.%2e/tenant-b{p}"),
    "%2e.": _spell(lambda p, lead, rest: f"{lead}/%2e./%2e./tenant-b{p}"),
    "%2e": _spell(lambda p, lead, rest: f"{lead}/%2e{rest}"),
    "%2f": _spell(lambda p, lead, rest: f"{lead}/..%2f..%2ftenant-b{p}"),
    # `%2F` alone is not hostile: it decodes to the same path (model ids like `provider/model` need it).
    "dotdot-semicolon": _spell(lambda p, lead, rest: f"{lead}/..;/..;/tenant-b{p}"),
    "backslash": _spell(lambda p, lead, rest: f"{lead}/..\\..\\tenant-b{p}"),
    "%5c": _spell(lambda p, lead, rest: f"{lead}/..%5c..%5ctenant-b{p}"),
    "%5C-inside": _spell(lambda p, lead, rest: f"{lead}%5C{rest[1:] or 'x'}"),
    "empty-segment": _spell(lambda p, lead, rest: f"{lead}/{rest or '/x'}"),
    "leading-//": _spell(lambda p, lead, rest: f"/{p}"),
}


def _config_file(tmp_path_factory, upstream: HostileUpstream) -> str:
    path = tmp_path_factory.mktemp("paths") / "providers.yaml"
    path.write_text(
        "providers:\n"
        "  tenant:\n"
        f"    base_url: {upstream.url('/tenant-a/v1/')}\n"
        f"    api_key: {TENANT_A_KEY}\n"
        "default_provider: tenant\n"
        "models_refresh_seconds: 600\n"
    )
    return str(path)


@pytest.fixture(scope="module", params=["target", "provider", "livepeer"])
def proxy(request, upstream, tmp_path_factory) -> Iterator[tuple[str, Gunicorn]]:
    mode = request.param
    env = {"REQUEST_TIMEOUT_SECONDS": "10", "CONNECT_TIMEOUT_SECONDS": "2"}
    if mode == "provider":
        env["COT_PROXY_CONFIG"] = _config_file(tmp_path_factory, upstream)
    else:
        env.update({"TARGET_BASE_URL": upstream.url("/tenant-a/v1/"), "UPSTREAM_API_KEY": TENANT_A_KEY})
    if mode == "livepeer":
        env["GATEWAY_URL"] = upstream.root
    g = Gunicorn(env, workers=1)
    yield mode, g
    g.stop()


def _escapes_upper(line: bytes) -> bytes:
    return re.sub(rb"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), line)


def _send(g: Gunicorn, method: str, target: str):
    if method in ("POST", "PUT", "PATCH"):
        return raw_request(g.port, method, target, {"Content-Type": "application/json"}, json.dumps(CHAT).encode())
    return raw_request(g.port, method, target)


def test_spellings_are_hostile():
    """The table itself: every spelling differs from the route and holds what it claims to hold."""
    for name, spell in SPELLINGS.items():
        for route in ROUTES:
            spelled = spell(route)
            assert spelled != route, (name, route)
            assert any(s in spelled.lower() for s in ("/.", "%2e", "%2f", "\\", "%5c", "//")), (name, spelled)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("route", ROUTES)
def test_hostile_path_refused_and_never_sent(proxy, up, route, spelling):
    mode, g = proxy
    target = SPELLINGS[spelling](route)
    wrong = []
    for method in METHODS:
        r = _send(g, method, target)
        ok = r.status == 400
        if ok and method != "HEAD":
            try:
                ok = r.error()["code"] == "invalid_path"
            except (ValueError, KeyError, AssertionError):
                ok = False
        if not ok:
            wrong.append(f"{method} -> {r.status} {r.body[:120]!r}")
        assert TENANT_B_SECRET.encode() not in r.body, f"{mode}: {method} {target} reached tenant B"
    assert not up.seen, f"{mode}: the upstream received {up.seen} for {target}"
    assert not wrong, f"{mode}: {target} was not refused with 400 invalid_path: {wrong}"


LEGIT = (
    # (client target, what tenant A must receive after /tenant-a/v1/)
    (
        "/v1/files/file-1?purpose=fine-tune&after=a%2Fb%2e%2e&x=..",
        "files/file-1?purpose=fine-tune&after=a%2Fb%2e%2e&x=..",
    ),
    ("/v1/files/report..v2.jsonl", "files/report..v2.jsonl"),
    ("/v1/files/file%20name", "files/file%20name"),
    ("/v1/models/meta-llama/Llama-3.1-8B", "models/meta-llama/Llama-3.1-8B"),
)


@pytest.mark.parametrize("target, received", LEGIT, ids=[t for t, _ in LEGIT])
def test_legit_path_reaches_tenant_a_unchanged(proxy, up, target, received):
    """Dots inside a segment and anything in the query are not dot segments: relayed as they are."""
    mode, g = proxy
    r = raw_request(g.port, "GET", target)
    if mode == "provider" and target.startswith("/v1/models/"):
        assert r.status in (200, 404), r  # several-provider mode answers model lookups from its catalog
        assert not up.requests
        return
    assert r.status == 200, r
    # Percent-escapes may change case on the way (urllib3 upper-cases them); nothing else may change.
    assert [_escapes_upper(x.line) for x in up.requests] == [
        _escapes_upper(f"GET /tenant-a/v1/{received} HTTP/1.1".encode())
    ]
    assert up.requests[0].header("authorization") == f"Bearer {TENANT_A_KEY}"
    assert TENANT_B_SECRET.encode() not in r.body


def test_legit_chat_is_relayed(proxy, up):
    mode, g = proxy
    r = _send(g, "POST", "/v1/chat/completions")
    assert r.status == 200, r
    assert r.json()["choices"][0]["message"]["content"]
    expected = (
        b"POST /process/request/v1/chat/completions HTTP/1.1"
        if mode == "livepeer"
        else b"POST /tenant-a/v1/chat/completions HTTP/1.1"
    )
    assert [x.line for x in up.requests] == [expected]
