"""GET /v1/models and /v1/models/<id>.

With several providers (or a config file) the proxy answers from its model
catalog: every provider's models as `provider/id`, plus aliases. With one
provider from the environment the upstream's list passes through.
"""

from flask import Blueprint, Response, current_app

from .. import echo
from ..errors import NotFound
from ..exchange import Exchange
from ..relay import Family
from ..routing.router import Router
from . import relay

bp = Blueprint("models", __name__)


def from_catalog(ex: Exchange) -> Response | None:
    router: Router = current_app.extensions["cot_proxy.router"]
    wanted = ex.path.removeprefix("models").strip("/")
    if router.transparent or not router.providers:
        # One upstream: its list passes through (with LLM_PARAMS names added by the Overrides
        # step); a single configured name is answered here, the upstream does not know it.
        if wanted and wanted in router.catalog.aliases:
            return echo.json_response({"id": wanted, "object": "model", "created": 0, "owned_by": "cot-proxy"})
        return None
    entries = router.model_entries()
    if not wanted:
        return echo.json_response({"object": "list", "data": entries})
    for entry in entries:
        if entry["id"] == wanted:
            return echo.json_response(entry)
    raise NotFound(f"The model '{wanted}' does not exist.", param="model", code="model_not_found")


MODELS = Family("models", parse_response=True, echo=echo.models, local=from_catalog)


@bp.get("/v1/models")
@bp.get("/v1/models/<path:model>")
def models(model: str | None = None) -> Response:
    return relay(MODELS)
