"""Request and response fixes, each a small `Transform`; `build_pipeline` orders them.

To add a step: write a `Transform` subclass in its own module and put it in
the list below. The relay never needs to change.
"""

from __future__ import annotations

from ..config import Config
from ..livepeer.transforms import LivepeerGateway
from .base import Transform
from .headers import HeaderScrub
from .overrides import Overrides
from .pipeline import BoundPipeline, Pipeline
from .sse_filter import SSEFilter
from .think import Think
from .usage import UsageCapture

__all__ = ["Transform", "Pipeline", "BoundPipeline", "build_pipeline"]


def build_pipeline(config: Config) -> Pipeline:
    """The ordered list of steps; order matters (request hooks run first to last)."""
    return Pipeline([
        HeaderScrub(),
        LivepeerGateway(),
        SSEFilter(),
        UsageCapture(),
        # Think before Overrides: the text it flushes at the end still gets the client's model name.
        Think(config),
        Overrides(config.llm_params),
    ])
