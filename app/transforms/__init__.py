"""Request and response fixes, each a small `Transform`; `build_pipeline` orders them.

To add a step: write a `Transform` subclass in its own module and put it in
the list below. The relay never needs to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Transform
from .pipeline import BoundPipeline, Pipeline

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Transform", "Pipeline", "BoundPipeline", "build_pipeline"]


def build_pipeline(config: Config) -> Pipeline:
    """The ordered list of steps; order matters (request hooks run first to last).
    Imported here, not at the top: the steps' modules import `transforms.base` themselves."""
    from .. import observability, ui
    from ..access.guard import access_transforms
    from ..livepeer.transforms import LivepeerGateway
    from ..translate.messages_steps import MessagesRequest, MessagesResponse
    from ..translate.responses_steps import responses_steps
    from .headers import HeaderScrub
    from .model_name import ModelName
    from .overrides import Overrides
    from .sse_filter import SSEFilter
    from .think import Think
    from .usage import UsageCapture

    responses_request, responses_answer = responses_steps(config)
    return Pipeline(
        [
            # Access first: authenticate, check and limit before anything else runs (app/access/guard.py).
            *access_transforms(config),
            HeaderScrub(),
            MessagesRequest(),  # per attempt: /v1/messages passed through or spoken as chat completions
            responses_request,  # per attempt: /v1/responses passed through or spoken as chat completions
            LivepeerGateway(),
            SSEFilter(),
            UsageCapture(),
            # Think before ModelName: the text it flushes at the end still gets the client's model name.
            Think(config),
            Overrides(config.llm_params),
            ModelName(),  # after every step that may rename the request
            MessagesResponse(),  # chat answers back into Anthropic's shape, once every chat step is done
            responses_answer,  # chat answers back into Responses objects and events (reasoning already split)
            # Observability last: it only reads, and must see answers as the client gets them.
            *observability.pipeline_steps(config),
            *ui.pipeline_steps(config),  # the console's live-request registry (reads only; off without ADMIN_TOKEN)
        ]
    )
