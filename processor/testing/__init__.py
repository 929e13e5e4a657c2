"""An OpenAI-compatible mock server (aiohttp.web) for the demo, end-to-end tests and benchmarks.

It answers like the real API: the same JSON shapes, the same error bodies, rate limits
enforced with token buckets (``x-ratelimit-*``, ``retry-after``, ``retry-after-ms``
headers) on its own estimate of each request's tokens (:mod:`.pricing`, written apart from
the client's), plus injectable faults (500/503, resets, hangs, bodies cut off mid-stream)
and an outage window (502 from a load balancer, or resets). The request path is kept lean:
orjson, no per-request logging, counters not lists.

Parts: :mod:`.config` (settings and counters), :mod:`.pricing` (the token charge),
:mod:`.limiter` (buckets and 429s), :mod:`.faults`, :mod:`.bodies` (answers and error
bodies), :mod:`.inputs` (embeddings inputs refused as the API does), :mod:`.app` (routes,
``build_app``, ``serve``, ``run``), :mod:`.batchjobs` and
:mod:`.batchroutes` (the Files and Batch API: statuses, output files, a time scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .app import build_app, run, serve
from .batchjobs import BatchMockConfig, BatchStats
from .batchroutes import BATCHES_KEY
from .config import STATS_KEY, MockConfig, MockStats, OutageMode
from .limiter import format_duration
from .pricing import price

__all__ = [
    "BATCHES_KEY",
    "STATS_KEY",
    "BatchMockConfig",
    "BatchStats",
    "MockConfig",
    "MockStats",
    "OutageMode",
    "build_app",
    "cost_of",
    "format_duration",
    "run",
    "serve",
]


def cost_of(body: Mapping[str, Any], endpoint: str) -> int:
    """The tokens the mock server charges a request (its own formula, :mod:`.pricing`).

    Args:
        body: the JSON request body.
        endpoint: the URL path, e.g. ``/v1/chat/completions``.

    Raises:
        ValueError: an endpoint the server does not serve, or an unreadable inline image.
    """
    for kind in ("chat", "embeddings", "responses", "completions"):
        if endpoint.rstrip("/").endswith("/chat/completions" if kind == "chat" else "/" + kind):
            return price(body, kind).total
    raise ValueError(f"the mock server does not serve {endpoint}")
