"""What a job will cost and how long it must take, before anything is sent.

:func:`estimate_job` streams a job file through :func:`processor.jobs.iter_jobs` and
prices every request with the same :class:`~processor.cost.TokenCounter` the engine
admits it with, so ``prompt_tokens + max_completion_tokens`` is exactly what the
engine will charge against ``--tpm``. Dollars come from :data:`PRICES`, list prices
per million tokens as of :data:`PRICES_AS_OF`, and are an upper bound: completions are
charged at their full ``max_tokens`` budget, and prompts at the larger of the exact and
the character estimate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..cost import TokenCounter, base_model_name
from ..cost.packing import Packs
from ..errors import ConfigError, JobFormatError
from ..jobs import DEFAULT_ENDPOINT, BadLine, iter_jobs
from ..shards import Shard

__all__ = [
    "BATCH_DISCOUNT",
    "MAX_BAD_LINE_NUMBERS",
    "PRICES",
    "PRICES_AS_OF",
    "Estimate",
    "ModelTotals",
    "Price",
    "estimate_job",
    "load_prices",
    "min_seconds",
    "price_for",
]

MAX_BAD_LINE_NUMBERS = 100
#: what the Batch API charges of the list price (half).
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1,000,000 tokens."""

    input: float
    output: float = 0.0


#: When :data:`PRICES` were OpenAI's standard (non-batch) list prices.
PRICES_AS_OF = "2025-06"
#: Model-name prefix -> price; the longest matching prefix wins, so the variants that
#: cost differently from their family (``o3-mini``, ``gpt-3.5-turbo-instruct``) have rows.
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-3.5-turbo-instruct": Price(1.50, 2.00),
    "text-embedding-3-small": Price(0.02),
    "text-embedding-3-large": Price(0.13),
}


@dataclass(slots=True)
class ModelTotals:
    """Token sums of one model's requests."""

    requests: int = 0
    prompt_tokens: int = 0
    max_completion_tokens: int = 0
    image_tokens: int = 0
    cost_usd: float | None = None


@dataclass(slots=True)
class Estimate:
    """The figures of one job (see :func:`estimate_job`); ``to_dict`` is the ``--json``."""

    requests: int = 0
    #: HTTP requests the run will send (fewer than ``requests`` with ``--pack``).
    http_requests: int = 0
    pack: int | str | None = None
    bad_lines: int = 0
    prompt_tokens: int = 0
    max_completion_tokens: int = 0
    image_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_models: list[str] = field(default_factory=list)
    min_seconds: float | None = None
    binding_limit: str | None = None
    too_large: int = 0
    bad_line_numbers: list[int] = field(default_factory=list)
    token_counts: str = "estimate"
    prices_as_of: str = PRICES_AS_OF
    by_model: dict[str, ModelTotals] = field(default_factory=dict)
    #: "online", or "batch": priced at the Batch API's discount, bound by its window.
    via: str = "online"

    def at_batch_price(self) -> None:
        """Price the job through the Batch API: :data:`BATCH_DISCOUNT` off every model."""
        self.via = "batch"
        self.cost_usd *= BATCH_DISCOUNT
        for totals in self.by_model.values():
            if totals.cost_usd is not None:
                totals.cost_usd *= BATCH_DISCOUNT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_prices(path: str | os.PathLike[str]) -> dict[str, Price]:
    """Read a ``{"model-prefix": {"input": usd_per_1m, "output": usd_per_1m}}`` file.

    Raises:
        ConfigError: unreadable, not that shape, or a price that is not a number >= 0.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read prices file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of model prefix -> prices")
    prices: dict[str, Price] = {}
    for prefix, row in data.items():
        values = row if isinstance(row, dict) else {}
        usd_in, usd_out = _usd(values.get("input")), _usd(values.get("output", 0))
        if usd_in is None or usd_out is None:
            raise ConfigError(
                f"{path}: {prefix!r} needs {{\"input\": usd_per_1m, \"output\": usd_per_1m}} "
                f"with numbers >= 0, got {row!r}"
            )
        prices[prefix.lower()] = Price(usd_in, usd_out)
    return prices


def _usd(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value >= 0
    return float(value) if ok else None


def price_for(model: str, prices: Mapping[str, Price] = PRICES) -> Price | None:
    """The price of ``model`` by its longest matching prefix (fine-tunes and
    ``provider/`` names count as their base model), or ``None``."""
    name = base_model_name(model)
    best = max((p for p in prices if name.startswith(p.lower())), key=len, default=None)
    return None if best is None else prices[best]


def min_seconds(
    requests: int, tokens: int, rpm: float | None, tpm: float | None
) -> tuple[float | None, str | None]:
    """The least time the limits allow, and which limit sets it.

    ``max(requests / rpm, tokens / tpm)`` minutes: neither limit can be beaten, and the
    engine keeps both full. ``(None, None)`` when no limit is given.
    """
    by_limit = {
        name: amount / limit * 60.0
        for name, amount, limit in (("rpm", requests, rpm), ("tpm", tokens, tpm))
        if limit
    }
    if not by_limit:
        return None, None
    binding = max(by_limit, key=lambda name: by_limit[name])
    return by_limit[binding], binding


def estimate_job(
    path: str | os.PathLike[str],
    *,
    counter: TokenCounter | None = None,
    prices: Mapping[str, Price] = PRICES,
    rpm: float | None = None,
    tpm: float | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    pack: int | str | None = None,
    burst_seconds: float = 1.0,
    shard: Shard | None = None,
) -> Estimate:
    """Count, price and time a job file without sending anything.

    Lines the engine would refuse are counted in ``bad_lines``: unparseable or invalid
    lines, and requests that cannot be priced, such as an image whose header is
    unreadable. Requests over the whole ``tpm`` limit are counted in ``too_large`` (the
    engine fails them unsent) and left out of ``min_seconds``.

    Args:
        path: the JSONL job file (read once, lazily).
        counter: prices requests; a default :class:`TokenCounter` when ``None``.
        prices: model prefix -> :class:`Price` (see :func:`price_for`).
        rpm, tpm: the limits the run will use, for ``min_seconds``.
        endpoint: the endpoint of lines that name none.
        pack: ``--pack`` (a size, ``"auto"`` or None): requests are counted as the run
            packs them (:class:`~processor.cost.packing.Packs`, a pack's tokens within
            ``burst_seconds`` of ``tpm``), so ``min_seconds`` is the packed bound.
        burst_seconds: the run's burst (``--burst-seconds``).
        shard: count only this shard's lines (``--shard K/N``).
    """
    counter = counter if counter is not None else TokenCounter()
    est = Estimate(pack=pack)
    sent_requests = sent_tokens = 0
    burst = tpm / 60.0 * burst_seconds if tpm else None
    packs: Packs[int] | None = Packs(pack if isinstance(pack, int) else None,
                                     lambda: burst) if pack else None
    keep = shard.line_filter() if shard is not None else None
    for item in iter_jobs(path, default_endpoint=endpoint, keep=keep):
        try:
            cost = None if isinstance(item, BadLine) else counter.cost(item.body, item.url)
        except (JobFormatError, ValueError):  # as the engine does: unpriceable means bad
            cost = None
        if cost is None or isinstance(item, BadLine):
            est.bad_lines += 1
            if len(est.bad_line_numbers) < MAX_BAD_LINE_NUMBERS:
                est.bad_line_numbers.append(item.line)
            continue
        totals = est.by_model.setdefault(item.model or "(no model)", ModelTotals())
        totals.requests += 1
        totals.prompt_tokens += cost.prompt_tokens
        totals.max_completion_tokens += cost.completion_tokens
        totals.image_tokens += cost.image_tokens
        if tpm and cost.total > tpm:
            est.too_large += 1
        else:
            sent_tokens += cost.total
            sent_requests += 1 if packs is None else len(
                packs.add(0, item.url, item.body, item.model, cost.total))
    if packs is not None:
        sent_requests += len(packs.flush())
    for model, totals in est.by_model.items():
        est.requests += totals.requests
        est.prompt_tokens += totals.prompt_tokens
        est.max_completion_tokens += totals.max_completion_tokens
        est.image_tokens += totals.image_tokens
        price = price_for(model, prices)
        if price is None:
            est.unpriced_models.append(model)
            continue
        # Priced per model from integer sums: float error does not grow with the job.
        totals.cost_usd = (
            totals.prompt_tokens * price.input + totals.max_completion_tokens * price.output
        ) / 1e6
        est.cost_usd += totals.cost_usd
    est.unpriced_models.sort()
    est.total_tokens = est.prompt_tokens + est.max_completion_tokens
    est.http_requests = sent_requests
    est.min_seconds, est.binding_limit = min_seconds(sent_requests, sent_tokens, rpm, tpm)
    est.token_counts = counter.mode if est.requests else "estimate"
    return est
