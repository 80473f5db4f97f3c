"""Schemathesis fuzzes the proxy against its own OpenAPI description (GET /openapi.json), in process.

For every operation in the document, in echo mode, in proxy mode (a real fake upstream), with
authentication on, and routed (two providers, LLM_PARAMS, THINK_MODE=separate); with schema-valid
data ("positive") and schema-violating data ("negative", where the operation has inputs to violate).
Each response must keep the invariants in support.py (no proxy-made 5xx, OpenAI error envelopes,
sendable headers), and:
- positive data is accepted (no 400: the document does not promise more than validation allows;
  operations marked `x-cot-proxy-stricter`, whose checks a schema cannot say, are exempt);
- negative data is rejected with a 4xx, where the proxy checks that input at all (operations
  marked `x-cot-proxy-validated: false` or `x-cot-proxy-lenient` are exempt);
- answers the proxy made, and the fake upstream's answers to the families the proxy parses,
  conform to the document (status code, content type, headers, body schema).

Examples per operation and mode: `EXAMPLES`, times FUZZ_SCALE. Derandomized: the same cases every run.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.specs.openapi import checks as st_checks

from app import openapi
from tests.fuzz import support
from tests.fuzz.support import CASES, DERANDOMIZE, KNOWN_SEEN, Target, examples

EXAMPLES = {"positive": 25, "negative": 25}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
PARSED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
"""Relayed answers the proxy reads and the fake upstream answers faithfully: checked against the document."""


def _violable(parameter: dict[str, Any]) -> bool:
    """A parameter schemathesis can send a wrong value for (not a free-form string)."""
    return parameter.get("required", False) or parameter.get("schema", {}) != {"type": "string"}


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, has inputs to violate) for every operation but the document's own."""
    out = []
    for path, item in openapi.spec()["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS or path == "/openapi.json":
                continue
            parameters = [*item.get("parameters", ()), *op.get("parameters", ())]
            has_inputs = bool(
                any(map(_violable, parameters))
                or op.get("requestBody")
                or any("adminToken" in s for s in op.get("security", ()))
            )
            out.append((method.upper(), path, has_inputs))
    return out


CASES_TO_RUN = [
    pytest.param(target, method, path, mode, id=f"{target}-{method} {path}-{mode}")
    for target in ("echo", "proxy", "auth", "routed")
    for method, path, has_inputs in _operations()
    for mode in ("positive", "negative")
    if mode == "positive" or has_inputs
]


@pytest.fixture(scope="module")
def schemas(targets: dict[str, Target]) -> dict[str, Any]:
    """The document as each app serves it (loading it is part of the test)."""
    return {name: schemathesis.openapi.from_wsgi("/openapi.json", t.app) for name, t in targets.items()}


def _auth_headers(target: str, path: str, mode: str) -> dict[str, str]:
    if target != "auth" or path in ("/healthz", "/livez", "/health", "/readyz", "/metrics", "/v1/metadata"):
        return {}
    if path == "/v1/usage":
        # positive: the admin token; negative: whatever schemathesis made of the security scheme
        return {"Authorization": f"Bearer {support.ADMIN_TOKEN}"} if mode == "positive" else {}
    return {"Authorization": f"Bearer {support.TOKEN}"}


def _checks(operation: Any, mode: str, proxy_made: bool) -> list[Any]:
    raw = operation.definition.raw
    checks: list[Any] = []
    if proxy_made or operation.path in PARSED:
        checks += [
            st_checks.status_code_conformance,
            st_checks.content_type_conformance,
            st_checks.response_headers_conformance,
            st_checks.response_schema_conformance,
        ]
    if mode == "positive":
        if "x-cot-proxy-stricter" not in raw:
            checks.append(st_checks.positive_data_acceptance)
    elif raw.get("x-cot-proxy-validated") is not False and "x-cot-proxy-lenient" not in raw:
        checks.append(st_checks.negative_data_rejection)
    return checks


def _sent(target: str, case: Any, headers: dict[str, str]) -> support.Sent:
    body = None if isinstance(case.body, NotSet) else case.body
    return support.Sent(
        target, case.method, case.formatted_path, dict(case.query or {}), {**(case.headers or {}), **headers}, body
    )


@pytest.mark.parametrize("target, method, path, mode", CASES_TO_RUN)
def test_openapi_fuzz(
    request: pytest.FixtureRequest, schemas: dict[str, Any], target: str, method: str, path: str, mode: str
) -> None:
    operation = schemas[target][path][method]
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    headers = _auth_headers(target, path, mode)
    nodeid = request.node.nodeid

    @settings(
        max_examples=examples(EXAMPLES[mode]),
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(case=operation.as_strategy(generation_mode=generation))
    def fuzz(case: Any) -> None:
        CASES[nodeid] += 1
        with support.ErrorLog() as log:
            try:
                response = case.call(headers=headers)
            except Exception:  # a stream that broke while it was read, or worse
                raise AssertionError(
                    f"request failed in the proxy:\n{traceback.format_exc()}\n{case.as_curl_command(headers=headers)}"
                ) from None
            found = support.problems(
                response.status_code, response.headers, response.content, case.method, case.formatted_path
            )
            if found:
                known = support.known_failure(_sent(target, case, headers), found)
                if known is not None:
                    KNOWN_SEEN[known.name] += 1
                    return
                raise AssertionError(
                    "\n".join(found) + f"\n{case.as_curl_command(headers=headers)}\nproxy log: {log.last()}"
                )
        checks = _checks(operation, mode, proxy_made=not support.is_relayed(response.headers))
        if checks:  # an empty list would mean schemathesis' default set
            case.validate_response(response, checks=checks, headers=headers)

    try:
        fuzz()
    except Unsatisfiable:
        pytest.skip("schemathesis cannot violate this operation's inputs")
