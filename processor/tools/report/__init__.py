"""report/: a job's run log drawn for the morning after. ``timeline`` (time buckets that
double in width, latency sketches), ``aggregate`` (the log streamed into them),
``headline`` (the figures for ``--summary`` / ``--json``), ``svg`` (static charts),
``page`` (the self-contained HTML file)."""

from .aggregate import Aggregate, aggregate
from .headline import format_headline, headline
from .page import CHARTS, render_page

__all__ = ["CHARTS", "Aggregate", "aggregate", "format_headline", "headline", "render_page"]
