"""The limits a run's requests were held to, and how much of them the run used.

A run counts its requests in *limit groups*: with ``--limit-scope model`` (the default)
each model (or shared bucket) has counters of its own, so two models at ``--rpm 300`` may
send 600 requests a minute between them; with ``--limit-scope key`` one set of counters
holds all of a key's models, and only a model with its own ``--limit`` is counted apart.
Each group's limit is the sum over the run's keys of what each key was held to: the
limit it learned from the server (``limit`` events), else the model's ``--limit``, else
the bare flag.

A group's limit is in force from its first request sent to its last (a model whose work
is done no longer counts as capacity left unused). Counters start empty, so the first
request waited for its own credit before the span began: it is left out of what the span
is measured against (else a short run at its limit shows more than 100%).

Every time bucket keeps, per group, what was sent and the limit in force at the time
(:class:`~.timeline.Slot`), so the limit line and the efficiency follow the limits as
they change, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .timeline import Slot, Timeline

__all__ = ["GroupUse", "LimitBook", "NAMES", "limit_lines", "usage"]

#: the per-minute limits the report draws.
NAMES = ("rpm", "tpm")
#: the group of requests counted together with the key's (the bare flags in key scope).
KEY_GROUP = ""
#: where groups beyond the report's table size are counted (no limit of their own).
OTHER = "(other)"


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and 0 < value < 1e15 else None


class LimitBook:
    """The limits in force as the log is read, and each group's span of sends.

    Args:
        max_rows: the most keys, groups and models kept (a hostile log may name more).
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.flags: dict[str, float] = {}
        self.keys: list[str | None] = [None]
        self.scope = "key"
        self.own: dict[str, dict[str, float]] = {}  # per-model limits (``--limit``)
        self.bucket_of: dict[str, str] = {}  # a shared bucket's models -> its name
        self.learned: dict[str, dict[tuple[str | None, str], float]] = {}
        self._learned_groups: set[str] = set()
        #: group -> [first send, last send] on the report's time axis, over all runs.
        self.spans: dict[str, list[float]] = {}
        #: group -> the tokens charged for its first request (the one at the span's start).
        self.first_tokens: dict[str, int] = {}
        self._in_force: dict[str, tuple[float | None, float | None]] = {}

    def start(self, limits: Any, cfg: Any) -> None:
        """A run starts: its flags (``limits``) and settings (``cfg``). A log written
        before limits per model (no ``limit_scope``) counted each key as one group."""
        cfg = cfg if isinstance(cfg, dict) else {}
        self.flags = {k: float(v) for k, v in limits.items()
                      if k in NAMES and _positive(v)} if isinstance(limits, dict) else {}
        keys = cfg.get("keys")
        names = [k for k in keys if isinstance(k, str)][: self.max_rows] \
            if isinstance(keys, list) else []
        self.keys = list(names) if len(names) > 1 else [None]
        self.scope = "model" if cfg.get("limit_scope") == "model" else "key"
        self.own = {}
        per_model = cfg.get("limits")
        if isinstance(per_model, Mapping):
            for model, values in list(per_model.items())[: self.max_rows]:
                if isinstance(model, str) and isinstance(values, Mapping):
                    self.own[model] = {n: v for n in NAMES
                                       if (v := _positive(values.get(n))) is not None}
        self.bucket_of = {}
        shared = cfg.get("shared_buckets")
        if isinstance(shared, list):
            for group in shared[: self.max_rows]:
                if isinstance(group, list) and group and all(isinstance(m, str) for m in group):
                    for model in group[: self.max_rows]:
                        self.bucket_of.setdefault(model, group[0])
        self.learned = {}
        self._learned_groups = set()
        self._in_force = {}

    def group(self, model: Any) -> str:
        """The group a request for ``model`` is counted in."""
        if not isinstance(model, str):
            return KEY_GROUP
        bucket = self.bucket_of.get(model, model)
        if self.scope != "model" and bucket not in self.own:
            return KEY_GROUP
        if bucket not in self.spans and len(self.spans) >= self.max_rows:
            return OTHER
        return bucket

    def learn(self, name: Any, value: Any, key: Any, model: Any) -> None:
        """A ``limit`` event: ``key``'s limit ``name`` for ``model``'s bucket is now
        ``value`` (``name`` may carry the bucket after a space, as the runner writes it)."""
        short = name.split(" ", 1)[0] if isinstance(name, str) else None
        number = _positive(value)
        if short not in NAMES or number is None:
            return  # only the limits the report draws: a hostile log's others are not kept
        group = model if isinstance(model, str) else KEY_GROUP
        named = key if isinstance(key, str) and len(self.keys) > 1 else None
        if named not in self.keys:
            return  # a key the run did not name
        if group not in self._learned_groups:
            if len(self._learned_groups) >= self.max_rows:
                return
            self._learned_groups.add(group)
        self.learned.setdefault(short, {})[(named, group)] = number
        self._in_force.pop(group, None)

    def in_force(self, group: str) -> tuple[float | None, float | None]:
        """The group's requests and tokens per minute now, summed over the keys (None:
        some key had none: no flag, nothing learned yet)."""
        known = self._in_force.get(group)
        if known is None:
            known = self._in_force[group] = (self._total(group, "rpm"),
                                             self._total(group, "tpm"))
        return known

    def _total(self, group: str, name: str) -> float | None:
        if group == OTHER:
            return None
        learned = self.learned.get(name, {})
        given = self.own.get(group, {}).get(name) or self.flags.get(name)
        total = 0.0
        for key in self.keys:
            value = learned.get((key, group)) or given
            if not value:
                return None
            total += value
        return total

    def sent(self, timeline: Timeline, x: float, model: Any, tokens: int) -> None:
        """A request for ``model`` sent at ``x`` (charged ``tokens``)."""
        group = self.group(model)
        span = self.spans.get(group)
        if span is None:
            self.spans[group] = [x, x]
            self.first_tokens[group] = tokens
        else:
            if x < span[0]:  # attempts are logged as they end, not always in order
                span[0] = x
                self.first_tokens[group] = tokens
            span[1] = max(span[1], x)
        bucket = timeline.at(x)
        if bucket.groups is None:
            bucket.groups = {}
        slot = bucket.groups.get(group)
        if slot is None:
            slot = bucket.groups[group] = Slot()
        slot.sent += 1
        slot.tokens += tokens
        slot.rpm, slot.tpm = self.in_force(group)


def _lines(timeline: Timeline, spans: Mapping[str, list[float]]
           ) -> dict[str, dict[str, list[float | None]]]:
    """Per group and name, the limit in force in each bucket of the group's span (the
    last one a send recorded, carried over buckets without one); None elsewhere."""
    n = timeline.used_buckets()
    width = timeline.width
    out: dict[str, dict[str, list[float | None]]] = {}
    for group, (first, last) in spans.items():
        lines: dict[str, list[float | None]] = {name: [None] * n for name in NAMES}
        held: dict[str, float | None] = dict.fromkeys(NAMES)
        for i in range(int(first / width), min(int(last / width), n - 1) + 1):
            groups = timeline.buckets[i].groups
            slot = groups.get(group) if groups else None
            for name in NAMES:
                if slot is not None:
                    held[name] = getattr(slot, name)
                lines[name][i] = held[name]
        out[group] = lines
    return out


def limit_lines(timeline: Timeline, book: LimitBook) -> dict[str, list[float | None]]:
    """Per name, the limit in force over all groups sending at the time, per bucket
    (the groups with a known limit; None where none had one)."""
    n = timeline.used_buckets()
    totals: dict[str, list[float | None]] = {name: [None] * n for name in NAMES}
    for lines in _lines(timeline, book.spans).values():
        for name in NAMES:
            total = totals[name]
            for i, value in enumerate(lines[name]):
                if value is not None:
                    total[i] = (total[i] or 0.0) + value
    return totals


@dataclass(slots=True)
class GroupUse:
    """What one group sent against its limits (``efficiency``: None where no limit)."""

    sent: int
    tokens: int
    rpm: float | None  # the last limit in force
    tpm: float | None
    efficiency: dict[str, float | None]


def usage(timeline: Timeline, book: LimitBook) -> tuple[dict[str, float | None],
                                                       dict[str, GroupUse]]:
    """Requests and tokens sent as a share of what the limits allowed while each group
    was sending: over all groups, and per group."""
    width = timeline.width
    used: dict[str, GroupUse] = {}
    whole = {name: [0.0, 0.0] for name in NAMES}
    for group, lines in _lines(timeline, book.spans).items():
        mine = {name: [0.0, 0.0] for name in NAMES}
        sent = tokens = 0
        last: dict[str, float | None] = dict.fromkeys(NAMES)
        for i in range(len(lines["rpm"])):
            groups = timeline.buckets[i].groups
            slot = groups.get(group) if groups else None
            got = {"rpm": slot.sent if slot else 0, "tpm": slot.tokens if slot else 0}
            sent += got["rpm"]
            tokens += got["tpm"]
            for name in NAMES:
                limit = lines[name][i]
                if limit is not None:
                    last[name] = limit
                    for sums in (mine[name], whole[name]):
                        sums[0] += got[name]
                        sums[1] += limit * width / 60.0
        start = int(book.spans[group][0] / width)
        ahead = {"rpm": 1, "tpm": book.first_tokens.get(group, 0)}
        for name in NAMES:  # the first request's credit came before the span
            if start < len(lines[name]) and lines[name][start] is not None:
                for sums in (mine[name], whole[name]):
                    sums[0] = max(0.0, sums[0] - ahead[name])
        used[group] = GroupUse(sent, tokens, last["rpm"], last["tpm"], _shares(mine))
    return _shares(whole), used


def _shares(sums: Mapping[str, list[float]]) -> dict[str, float | None]:
    return {name: (round(got / allowed, 4) if allowed else None)
            for name, (got, allowed) in sums.items()}
