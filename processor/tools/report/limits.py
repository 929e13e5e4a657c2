"""The limits a run's requests were held to, and how much of them the run used.

A run counts its requests in *limit groups*: with ``--limit-scope model`` (the default)
each model (or shared bucket) has counters of its own, so two models at ``--rpm 300`` may
send 600 requests a minute between them; with ``--limit-scope key`` one set of counters
holds all of a key's models, and only a model with its own ``--limit`` is counted apart.
Each group's limit is the sum over the run's keys of what each key was held to: the
limit it learned from the server (``limit`` events), else the model's ``--limit``, else
the bare flag. In key scope a model with its own ``--limit`` passes both its own counters
and the key's: its requests count in both groups (*nested* in the key's), and the run as
a whole was allowed the key's limit, or less while only such models sent (the sum of
their own limits).

A group's limit is in force from its first request sent to its last, in each run (a model
whose work is done, or not yet begun in a rerun, is not capacity left unused). Each run's
counters start empty, so each run's first request waited for its own credit before it
was sent: it is left out of what the span is measured against (else a short run, or a
run killed and rerun several times, shows more than 100%). A request sent while its limit
was still being learned (``auto``: the first few of each run) was held to no limit: it is
not measured either.

Every time bucket keeps, per group, what was sent and the limit in force at the time
(:class:`~.timeline.Slot`), so the limit line and the efficiency follow the limits as
they change, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .timeline import MAX_TIME, Slot, Timeline

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
        #: group -> its [first send, last send] in each run that sent for it, on the
        #: report's time axis (at most ``max_rows`` each: later runs widen the last).
        self.spans: dict[str, list[list[float]]] = {}
        #: the groups that have sent in this run (a new run opens a new span).
        self._run_groups: set[str | None] = set()
        #: (group, name) -> what the first request of each run held to a known limit
        #: took (1 request, its tokens), summed over runs: each run's counters start empty,
        #: so that request was paid by credit gathered before it was sent.
        self.ahead: dict[tuple[str, str], float] = {}
        #: this run's first such request by (group, name): (when, what it took).
        self._run_first: dict[tuple[str, str], tuple[float, int]] = {}
        #: groups whose requests also pass the key's counters (key scope, own limits).
        self.nested: set[str] = set()
        #: the spans of requests held by the key's counters alone (key scope), per run.
        self.bare: list[list[float]] = []
        #: group -> (limit, known since) for rpm and tpm, as :meth:`_total` gives them.
        self._in_force: dict[str, tuple[tuple[float | None, float],
                                        tuple[float | None, float]]] = {}
        #: (name, key, group) -> when this run first learned the limit (``limit`` events).
        self._known_at: dict[tuple[str, str | None, str], float] = {}

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
        self._known_at = {}
        self._run_groups = set()
        self._fold()

    def _fold(self) -> None:
        """The run's first requests into :attr:`ahead` (at a run's start and the end)."""
        for pair, (_, amount) in self._run_first.items():
            self.ahead[pair] = self.ahead.get(pair, 0.0) + amount
        self._run_first = {}

    def paid_ahead(self, group: str, name: str) -> float:
        """What the first request of each run took in ``group`` (see :attr:`ahead`)."""
        self._fold()
        return self.ahead.get((group, name), 0.0)

    def group(self, model: Any) -> str:
        """The group a request for ``model`` is counted in."""
        if not isinstance(model, str):
            return KEY_GROUP
        bucket = self.bucket_of.get(model, model)
        if self.scope != "model" and bucket not in self.own and (
                bucket not in self._learned_groups):  # (key scope: a model's own limit)
            return KEY_GROUP
        if bucket not in self.spans and len(self.spans) >= self.max_rows:
            return OTHER
        return bucket

    def learn(self, name: Any, value: Any, key: Any, model: Any, at: float = 0.0) -> None:
        """A ``limit`` event at ``at``: ``key``'s limit ``name`` for ``model``'s bucket is
        now ``value`` (``name`` may carry the bucket after a space, as the runner writes
        it). A request sent before the run first knew it was held to none."""
        short = name.split(" ", 1)[0] if isinstance(name, str) else None
        number = _positive(value)
        if short not in NAMES or number is None:
            return  # only the limits the report draws: a hostile log's others are not kept
        group = model if isinstance(model, str) else KEY_GROUP
        named = key if isinstance(key, str) and self.keys != [None] else None
        if named not in self.keys:
            return  # a key the run did not name
        if group not in self._learned_groups:
            if len(self._learned_groups) >= self.max_rows:
                return
            self._learned_groups.add(group)
        self.learned.setdefault(short, {})[(named, group)] = number
        self._known_at.setdefault((short, named, group), at)
        self._in_force.pop(group, None)

    def retire(self, key: Any) -> None:
        """A ``key_retired`` event: the server refused ``key`` for the rest of the run,
        so its limits are capacity no longer (the last key's stay: nothing is sent)."""
        if isinstance(key, str) and key in self.keys and len(self.keys) > 1:
            self.keys.remove(key)
            self._in_force = {}

    def in_force(self, group: str) -> tuple[float | None, float | None]:
        """The group's requests and tokens per minute now, summed over the keys (None:
        some key had none: no flag, nothing learned yet)."""
        (rpm, _), (tpm, _) = self._known(group)
        return rpm, tpm

    def _known(self, group: str) -> tuple[tuple[float | None, float],
                                          tuple[float | None, float]]:
        """The group's (limit, known since) for rpm and tpm (kept until one changes)."""
        known = self._in_force.get(group)
        if known is None:
            known = self._in_force[group] = (self._total(group, "rpm"),
                                             self._total(group, "tpm"))
        return known

    def _total(self, group: str, name: str) -> tuple[float | None, float]:
        """The group's ``name`` limit summed over the keys, and since when the run has
        known it (the last key's limit learned; flags are known from the start)."""
        if group == OTHER:
            return None, 0.0
        learned = self.learned.get(name, {})
        given = self.own.get(group, {}).get(name) or self.flags.get(name)
        total = since = 0.0
        for key in self.keys:
            value = learned.get((key, group))
            if value:
                since = max(since, self._known_at.get((name, key, group), 0.0))
            else:
                value = given
            if not value:
                return None, 0.0
            total += value
        return total, since

    def sent(self, timeline: Timeline, x: float, model: Any, tokens: int) -> None:
        """A request for ``model`` sent at ``x`` (charged ``tokens``): counted in its
        group, and in key scope in the key's group as well."""
        if not 0.0 <= x <= MAX_TIME:  # as the timeline holds it (NaN: 0)
            x = MAX_TIME if x > MAX_TIME else 0.0
        group = self.group(model)
        if group == KEY_GROUP:
            self._widen(self.bare, None, x)
        elif self.scope == "key" and group != OTHER:
            self.nested.add(group)
            self._count(timeline, x, KEY_GROUP, tokens)
        self._count(timeline, x, group, tokens)

    def _widen(self, spans: list[list[float]], name: str | None, x: float) -> None:
        """Take ``x`` into the run's span in ``spans`` (opened at the run's first send);
        ``name``: the group's (None for :attr:`bare`)."""
        if name not in self._run_groups:
            self._run_groups.add(name)
            if len(spans) < self.max_rows:
                spans.append([x, x])
                return
        span = spans[-1]  # attempts are logged as they end, not always in order
        span[0], span[1] = min(span[0], x), max(span[1], x)

    def _count(self, timeline: Timeline, x: float, group: str, tokens: int) -> None:
        self._widen(self.spans.setdefault(group, []), group, x)
        bucket = timeline.at(x)
        if bucket.groups is None:
            bucket.groups = {}
        slot = bucket.groups.get(group)
        if slot is None:
            slot = bucket.groups[group] = Slot()
        slot.sent += 1
        slot.tokens += tokens
        (slot.rpm, rpm_since), (slot.tpm, tpm_since) = self._known(group)
        for name, limit, since, amount in (("rpm", slot.rpm, rpm_since, 1),
                                           ("tpm", slot.tpm, tpm_since, tokens)):
            if limit is None or x < since:
                continue  # sent while the limit was unknown (still learning): held to none
            if name == "rpm":
                slot.held_requests += 1
            else:
                slot.held_tokens += tokens
            first = self._run_first.get((group, name))
            if first is None or x < first[0]:
                self._run_first[(group, name)] = (x, amount)


def _lines(timeline: Timeline, spans: Mapping[str, list[list[float]]]
           ) -> dict[str, dict[str, list[float | None]]]:
    """Per group and name, the limit in force in each bucket of the group's spans (the
    last one a send recorded, carried over buckets without one); None elsewhere."""
    n = timeline.used_buckets()
    width = timeline.width
    out: dict[str, dict[str, list[float | None]]] = {}
    for group, runs in spans.items():
        lines: dict[str, list[float | None]] = {name: [None] * n for name in NAMES}
        for first, last in runs:
            held: dict[str, float | None] = dict.fromkeys(NAMES)
            for i in _buckets(first, last, n, width):
                groups = timeline.buckets[i].groups
                slot = groups.get(group) if groups else None
                for name in NAMES:
                    if slot is not None:
                        held[name] = getattr(slot, name)
                    lines[name][i] = held[name]
        out[group] = lines
    return out


def _cover(spans: list[list[float]], n: int, width: float) -> list[bool]:
    """Per bucket, whether one of ``spans`` covers it."""
    covered = [False] * n
    for first, last in spans:
        for i in _buckets(first, last, n, width):
            covered[i] = True
    return covered


def _buckets(first: float, last: float, n: int, width: float) -> range:
    """The buckets (of the first ``n``, ``width`` seconds each) a span touches."""
    return range(int(first / width), min(int(last / width), n - 1) + 1)


def _overall(timeline: Timeline, book: LimitBook,
             lines: Mapping[str, Mapping[str, list[float | None]]]
             ) -> dict[str, tuple[list[float], list[float | None]]]:
    """Per name and bucket, what the run sent that was held to a known limit, and the
    limit in force over all groups sending at the time (None: none had one).

    A nested group's requests are in the key's group already; while the key has a limit
    they count there, against the key's limit (or the sum of the nested groups' own
    limits, when only they were sending and that is lower)."""
    n = timeline.used_buckets()
    width = timeline.width
    key = lines.get(KEY_GROUP)
    out: dict[str, tuple[list[float], list[float | None]]] = {}
    covered = {group: _cover(book.spans.get(group, []), n, width) for group in book.nested}
    bare = _cover(book.bare, n, width)
    for name in NAMES:
        got = [0.0] * n
        allowed: list[float | None] = [None] * n
        for i in range(n):
            groups = timeline.buckets[i].groups or {}
            capped = key is not None and key[name][i] is not None
            total: float | None = None
            nested_sum: float | None = 0.0
            for group, group_lines in lines.items():
                limit = group_lines[name][i]
                if group in book.nested:
                    if capped:
                        if not covered[group][i]:
                            continue
                        nested_sum = None if limit is None or nested_sum is None \
                            else nested_sum + limit
                        continue
                elif group == KEY_GROUP and capped and book.nested:
                    continue  # below, once the nested groups are summed
                if limit is None:
                    continue
                got[i] += _amount(groups.get(group), name)
                total = (total or 0.0) + limit
            if capped and key is not None:
                cap = key[name][i] or 0.0
                if book.nested and not bare[i] and nested_sum:
                    cap = min(cap, nested_sum)
                got[i] += _amount(groups.get(KEY_GROUP), name)
                total = (total or 0.0) + cap
            allowed[i] = total
        out[name] = (got, allowed)
    return out


def _amount(slot: Slot | None, name: str) -> float:
    """What ``slot`` sent under a known ``name`` limit (requests or tokens)."""
    if slot is None:
        return 0.0
    return float(slot.held_requests if name == "rpm" else slot.held_tokens)


def limit_lines(timeline: Timeline, book: LimitBook) -> dict[str, list[float | None]]:
    """Per name, the limit in force over all groups sending at the time, per bucket
    (the groups with a known limit; None where none had one)."""
    lines = _lines(timeline, book.spans)
    return {name: allowed for name, (_, allowed) in _overall(timeline, book, lines).items()}


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
    lines = _lines(timeline, book.spans)
    overall = _overall(timeline, book, lines)
    whole = {name: [sum(got), sum(v for v in allowed if v is not None) * width / 60.0]
             for name, (got, allowed) in overall.items()}
    for group, group_lines in lines.items():
        mine = {name: [0.0, 0.0] for name in NAMES}
        sent = tokens = 0
        last: dict[str, float | None] = dict.fromkeys(NAMES)
        for i in range(len(group_lines["rpm"])):
            groups = timeline.buckets[i].groups
            slot = groups.get(group) if groups else None
            sent += slot.sent if slot else 0
            tokens += slot.tokens if slot else 0
            for name in NAMES:
                limit = group_lines[name][i]
                if limit is not None:
                    last[name] = limit
                    mine[name][0] += _amount(slot, name)
                    mine[name][1] += limit * width / 60.0
        for name in NAMES:  # each run's first request's credit came before it was sent
            ahead = book.paid_ahead(group, name)
            mine[name][0] = max(0.0, mine[name][0] - ahead)
            # In the run's sums once: a nested group's first requests are the key's
            # while the key has a limit.
            if group not in book.nested or not book.paid_ahead(KEY_GROUP, name):
                whole[name][0] = max(0.0, whole[name][0] - ahead)
        used[group] = GroupUse(sent, tokens, last["rpm"], last["tpm"], _shares(mine))
    return _shares(whole), used


def _shares(sums: Mapping[str, list[float]]) -> dict[str, float | None]:
    return {name: (round(got / allowed, 4) if allowed else None)
            for name, (got, allowed) in sums.items()}
