"""POST /v1/responses (OpenAI Responses API), GET and DELETE /v1/responses/<id>.

A JSON request is relayed as the `responses` family: passed through to an upstream that speaks the
API, or served over chat completions (app/translate/responses_steps.py). Any other body goes through
untouched, as every unknown route does. A response this proxy stored is answered (and deleted) here;
any other id goes to the upstream.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from .. import echo
from ..errors import NotFound
from ..exchange import Exchange
from ..relay import Family
from ..translate import responses as rs
from ..translate.responses_steps import ResponsesRequest, owner_of
from ..translate.store import ResponseStore
from . import relay
from .passthrough import PASSTHROUGH

bp = Blueprint("responses", __name__)


def _store() -> ResponseStore | None:
    for t in current_app.extensions["cot_proxy.relay"].pipeline.transforms:
        if isinstance(t, ResponsesRequest):
            return t.store
    return None


def _response_id(ex: Exchange) -> str:
    return ex.path.split("/", 2)[1]


def stored(ex: Exchange) -> Response | None:
    """A response this proxy stored, for the client that made it; None = ask the upstream."""
    store = _store()
    record = store.get(_response_id(ex), owner_of(ex)) if store is not None else None
    return None if record is None else echo.json_response(record["response"])


def deleted(ex: Exchange) -> Response | None:
    store = _store()
    response_id = _response_id(ex)
    if store is None or not store.delete(response_id, owner_of(ex)):
        return None
    return echo.json_response({"id": response_id, "object": "response", "deleted": True})


def _not_stored(ex: Exchange) -> Response:
    raise NotFound(f"No response with id '{_response_id(ex)}' found.", code="response_not_found")


RESPONSES = Family("responses", json_body=True, parse_response=True, validate=rs.validate, errors=rs.RESPONSES_ERRORS)
# Reads of one response name no model: relayed as any other route (`passthrough`) when not stored here.
RETRIEVE = Family("passthrough", local=stored, echo=_not_stored, errors=rs.RESPONSES_ERRORS)
DELETE = Family("passthrough", local=deleted, echo=_not_stored, errors=rs.RESPONSES_ERRORS)


@bp.post("/v1/responses")
def create() -> Response:
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return relay(RESPONSES)
    return relay(PASSTHROUGH)  # not JSON: nothing to translate, relayed as before


@bp.get("/v1/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    return relay(RETRIEVE)


@bp.delete("/v1/responses/<response_id>")
def delete(response_id: str) -> Response:
    return relay(DELETE)
