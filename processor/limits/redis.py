"""The budget shared through Redis: every process on every machine spends one set of
counters per key and model (``--limiter redis://HOST:PORT/DB``).

:class:`RedisBudget` owns the connection and the Lua script (:file:`bucket.lua`): one
atomic call checks and debits every counter of a request (requests and tokens, per
minute and per day) as token buckets with debt on the Redis server's clock, and returns
the exact wait when they do not admit it. :class:`RedisLimiter` is a
:class:`~processor.limits.limiter.Limiter` whose admission is that call: it still learns
limits from the server's headers like a local one (``auto``, plausibility), and passes
what it learns (the limits, the server's ``remaining``, a 429's pause) on to the shared
counters, so that what one worker hears slows them all.

Redis fails closed: while it cannot be asked, nothing is admitted; admission waits and
asks again with a growing back-off, saying so (:attr:`RedisBudget.trouble`), and once
it has been down for longer than the run's outage window the run stops, resumable
(:attr:`RedisBudget.unavailable`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .counter import DAY, MINUTE, Counter, Unit
from .limiter import Limiter
from .redisurl import (
    check_url,
    client_options,
    connect_hint,
    mask_url,
    secrets_of,
    tls_failure,
    tls_warning,
    was_reset,
)

__all__ = ["RedisBudget", "RedisLimiter", "check_url", "fingerprint", "mask_url",
           "namespace_of"]

log = logging.getLogger(__name__)

#: the shared counters' hashes expire this long after their last write (a daily
#: budget needs a day's memory).
TTL_MS = 2 * 86_400_000
#: back-off while Redis cannot be asked: the first retry, the longest.
RETRY_FIRST, RETRY_CAP = 0.1, 5.0
#: least seconds between two "waiting for Redis" log lines.
WARN_EVERY = 10.0
#: first connections a TLS server may reset before the start gives up hearing why.
RESET_TRIES = 8
#: the bucket script.
LUA_PATH = Path(__file__).with_name("bucket.lua")


def fingerprint(api_key: str | None) -> str:
    """A keyed hash prefix of the API key (never the key): names its shared counters."""
    if not api_key:
        return "nokey"
    return hashlib.blake2b(api_key.encode(), key=b"batchproc-limiter-v1",
                           digest_size=8).hexdigest()


def namespace_of(base_url: str) -> str:
    """``api.openai.com/v1``: the base URL's host, port and path (no credentials)."""
    try:
        parts = urlsplit(base_url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "default"
    return f"{parts.hostname or ''}{port}{parts.path.rstrip('/')}" or "default"


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError("--limiter redis://... needs redis-py: pip install 'batchproc[redis]'"
                          ) from None
    return aioredis


class RedisBudget:
    """The Redis connection and the bucket script, shared by a run's limiters.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS, its
            options in the query: :mod:`processor.limits.redisurl`).
        password: used when the URL has none (from the environment).
        namespace: the first part of every key name (default: from the base URL).
        give_up_after: seconds Redis may stay unreachable before the run stops.
        timeout: seconds per Redis call.
    """

    def __init__(self, url: str, *, password: str | None = None, namespace: str,
                 give_up_after: float = 1800.0, timeout: float = 5.0) -> None:
        check_url(url)
        aioredis = _import_redis()
        self.where = mask_url(url)
        self._secrets = [s for s in (password, *secrets_of(url)) if s]
        self._url = url
        plain, options = client_options(url)
        options |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if password and not urlsplit(url).password:
            options["password"] = password
        self.client = aioredis.from_url(plain, **options)
        self.script = self.client.register_script(LUA_PATH.read_text(encoding="utf-8"))
        self.namespace = namespace
        self.give_up_after = give_up_after
        self.failures = 0
        self.down_since: float | None = None
        self.reason = ""
        #: the type of the last error (``ConnectionError``), for the run log.
        self.error = ""
        self._warned = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, fp: str, bucket: str | None) -> str:
        """The hash of one key's bucket (None: the counters the key's models share).

        The braces make every hash of one key land on one Redis Cluster slot.
        """
        tag = "{" + f"{self.namespace}|{fp}" + "}"
        return f"batchproc:{tag}:key" if bucket is None else f"batchproc:{tag}:m:{bucket}"

    # -- calls -------------------------------------------------------------------------

    async def call(self, keys: Sequence[str], args: Sequence[str | float]) -> list[Any] | None:
        """Run the script; None if Redis could not be asked (see :attr:`trouble`)."""
        try:
            reply = await self.script(keys=list(keys), args=list(args))
        except Exception as exc:  # noqa: BLE001 - redis-py's errors and OSErrors alike
            self._failed(exc)
            return None
        if self.down_since is not None:
            log.warning("Redis at %s is back after %.1fs; admitting again", self.where,
                        time.monotonic() - self.down_since)
        self.failures = 0
        self.down_since = None
        return [item.decode() if isinstance(item, bytes) else item for item in reply]

    def spawn(self, keys: Sequence[str], args: Sequence[str | float]) -> None:
        """Call the script in the background (feedback: refunds, 429s, headers)."""
        task = asyncio.get_running_loop().create_task(self._feedback(keys, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _feedback(self, keys: Sequence[str], args: Sequence[str | float]) -> None:
        try:
            await self.script(keys=list(keys), args=list(args))
        except Exception as exc:  # noqa: BLE001 - best effort: admission fails closed
            log.debug("Redis feedback (%s) lost: %s", args[0], self._words(exc))

    def _words(self, exc: BaseException) -> str:
        return self._words_of(f"{type(exc).__name__}: {exc}")[:200]

    def _words_of(self, text: str) -> str:
        for secret in self._secrets:  # as given, and as decoded from the URL (%40 -> @)
            for form in sorted({secret, unquote(secret)}, key=len, reverse=True):
                text = text.replace(form, "***")
        return text

    def _failed(self, exc: BaseException, hint: str = "") -> None:
        now = time.monotonic()
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
        self.reason = self._words(exc) + hint
        self.error = type(exc).__name__
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("%s", self.trouble)

    def retry_in(self) -> float:
        """Seconds until Redis is asked again (doubling from RETRY_FIRST to RETRY_CAP)."""
        if self.unavailable:
            return math.inf
        return float(min(RETRY_CAP, RETRY_FIRST * 2 ** max(0, self.failures - 1)))

    @property
    def trouble(self) -> str | None:
        """``waiting for Redis at HOST:PORT (ConnectionError: ...) for 12s`` while down."""
        if self.down_since is None:
            return None
        down = time.monotonic() - self.down_since
        return (f"waiting for Redis at {self.where} for {down:.0f}s ({self.reason}); "
                "nothing is sent without the shared budget")

    @property
    def unavailable(self) -> str | None:
        """Why the run must stop: Redis unreachable for longer than ``give_up_after``."""
        if self.down_since is None or time.monotonic() - self.down_since < self.give_up_after:
            return None
        return (f"Redis at {self.where} has been unreachable for "
                f"{time.monotonic() - self.down_since:.0f}s ({self.reason})")

    async def check(self) -> None:
        """Ask Redis once at the start: a refused password, or a TLS certificate either
        side refuses, is a usage error; an unreachable server is waited for like a later
        outage."""
        if (warning := tls_warning(self._url)) is not None:
            log.warning("%s", warning)
        scheme = urlsplit(self._url).scheme
        for attempt in range(RESET_TRIES):
            try:
                await self.client.ping()
                return
            except Exception as exc:  # noqa: BLE001
                words = self._words(exc)
                if any(w in words.lower() for w in ("auth", "password", "noperm")):
                    raise ConfigError(f"Redis at {self.where} refused us: {words}") from None
                tls = tls_failure(exc, urlsplit(self._url).hostname or "")
                if tls is not None:  # waiting would not make it trusted: fail closed, now
                    raise ConfigError(f"Redis at {self.where}: {self._words_of(tls)}"
                                      ) from None
                # A TLS 1.3 server that wants a client certificate says so in an alert
                # just after the handshake, which its reset often overtakes: ask again
                # (at once, a few times) to hear why.
                if scheme == "rediss" and was_reset(exc) and attempt + 1 < RESET_TRIES:
                    continue
                self._failed(exc, connect_hint(exc, scheme))
                return

    async def aclose(self) -> None:
        """Finish the feedback in flight (briefly) and close the connections."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in list(self._tasks):
                task.cancel()
        await self.client.aclose()


def _field(c: Counter, mirror: bool) -> str:
    unit = "r" if c.unit is Unit.REQUESTS else "t"
    window = {MINUTE: "pm", DAY: "pd"}.get(c.period, f"p{c.period:g}")
    return ("s" if mirror else "") + unit + window


class RedisLimiter(Limiter):
    """A limiter whose counters live in Redis (shared by every worker of the key).

    Args:
        budget: the connection and script.
        keys: the hashes: the model bucket's, then the key's shared one if any.
        own / shared: the bucket's counters and the key's shared ones (``--limit-scope
            key``); they carry the limits (learned ones too), Redis the levels.
        auto_requests / auto_tokens / burst_seconds: as for :class:`Limiter`.
    """

    __slots__ = ("budget", "keys", "_shared", "_last_wait", "_binding", "_pushed")

    remote = True

    def __init__(self, budget: RedisBudget, keys: list[str], own: list[Counter],
                 shared: list[Counter], *, auto_requests: bool = False,
                 auto_tokens: bool = False, burst_seconds: float = 1.0) -> None:
        super().__init__(own + shared, auto_requests=auto_requests, auto_tokens=auto_tokens,
                         burst_seconds=burst_seconds)
        self.budget = budget
        self.keys = keys
        self._shared = {id(c) for c in shared}
        self._last_wait = 0.0
        self._binding: Counter | None = None
        self._pushed = -math.inf

    @property
    def trouble(self) -> str | None:
        return self.budget.trouble

    @property
    def unavailable(self) -> str | None:
        return self.budget.unavailable

    def trouble_event(self) -> tuple[str, dict[str, Any]]:
        """``redis``, the masked URL and the error (type, and words without secrets)."""
        b = self.budget
        return "redis", {"url": b.where, "error": b.error or None, "msg": b.reason or None}

    def _specs(self, tokens: float, *, mirrors: bool = True) -> tuple[list[Counter], list[str]]:
        counters: list[Counter] = []
        args: list[str] = []
        kinds = [(c, "d" if not c.refill else "r") for c in self.counters]
        if mirrors:
            kinds += [(m.counter, "m") for m in self.server.mirrors.values()]
        for c, kind in kinds:
            burst = {"r": self.burst_seconds, "d": c.period, "m": MINUTE}[kind]
            where = "2" if id(c) in self._shared and len(self.keys) > 1 else "1"
            args += [where, _field(c, kind == "m"), repr(c.limit / c.period), repr(burst),
                     repr(float(c.unit.amount(tokens))), kind,
                     "q" if c.unit is Unit.REQUESTS else "t"]
            counters.append(c)
        return counters, args

    def _call_args(self, op: str, n: int, extra: Sequence[float], specs: list[str]
                   ) -> list[str | float]:
        return [op, TTL_MS, n, *extra, *([0] * (3 - len(extra))), *specs]

    def try_acquire(self, tokens: int) -> float:
        raise TypeError("a Redis limiter admits through 'await acquire(tokens)'")

    async def acquire(self, tokens: int) -> float:
        """Spend ``tokens`` (and one request) from the shared counters and return 0, or
        return the exact wait (nothing spent); while Redis cannot be asked, the retry
        back-off (nothing is admitted without its consent)."""
        counters, args = self._specs(tokens)
        reply = await self.budget.call(self.keys, self._call_args("take", len(counters),
                                                                  [tokens], args))
        if reply is None:
            self._binding = None
            self._last_wait = self.budget.retry_in()
            return self._last_wait
        if reply[0] == "ok":
            self.server.admitted(tokens)
            self.cum_requests, self.cum_tokens = float(reply[1]), float(reply[2])
            self._last_wait = 0.0
            return 0.0
        wait, index = float(reply[1]), int(reply[2])
        self._binding = counters[index - 1] if index > 0 else None
        # A positive wait however small: the counters said no.
        self._last_wait = max(wait, 1e-6)
        return self._last_wait

    def wait_time(self, tokens: int, now: float) -> float:
        """The last wait Redis gave (it is asked, not computed here)."""
        return self._last_wait

    def binding(self, tokens: int, now: float) -> Counter | None:
        """The counter that made the last wait (None: a pause, or Redis down)."""
        return self._binding

    def refund(self, tokens: float) -> None:
        """Give ``tokens`` back to the shared token counters (a negative debit)."""
        if tokens <= 0:
            return
        counters, args = self._specs(tokens, mirrors=False)
        keep = [i for i, c in enumerate(counters) if c.unit is Unit.TOKENS]
        if keep:
            picked = [a for i in keep for a in args[7 * i:7 * i + 7]]
            self.budget.spawn(self.keys, self._call_args("give", len(keep), [tokens], picked))

    def rate_limited(self, retry_after: float | None, cooldown: float = 1.0) -> None:
        """A 429: pause and slow down every worker of the key (and this one at once)."""
        super().rate_limited(retry_after, cooldown)
        counters, args = self._specs(0, mirrors=False)
        pause = retry_after if retry_after is not None else 1.0
        pause = min(max(pause, 0.0), 86_400.0) if pause == pause else 1.0
        self.budget.spawn(self.keys, self._call_args("hit", len(counters), [pause, cooldown],
                                                          args))

    def sync(self, limit_requests: float | None, remaining_requests: float | None,
             limit_tokens: float | None, remaining_tokens: float | None, *, sent_at: float,
             cum_requests: float, cum_tokens: float, force: bool = False,
             refused_tokens: int | None = None) -> None:
        """Learn from one answer's headers (as a local limiter does) and set the shared
        mirrors of the server's counters from its ``remaining``."""
        super().sync(limit_requests, remaining_requests, limit_tokens, remaining_tokens,
                     sent_at=sent_at, cum_requests=cum_requests, cum_tokens=cum_tokens,
                     force=force, refused_tokens=refused_tokens)
        now = self.now()
        if not self.server.mirrors or (now - self._pushed < self.server.sync_interval
                                       and not force):
            return
        self._pushed = now
        remaining = {Unit.REQUESTS: remaining_requests, Unit.TOKENS: remaining_tokens}
        args: list[str] = []
        n = 0
        for unit, mirror in self.server.mirrors.items():
            left = remaining[unit]
            if left is None or not math.isfinite(left):
                continue
            back = 0.0 if refused_tokens is None else float(unit.amount(refused_tokens))
            c = mirror.counter
            left = min(max(0.0, float(left)), c.limit)  # a server's nonsense stays bounded
            args += ["1", _field(c, True), repr(c.limit / c.period), repr(MINUTE),
                     repr(float(left) + back), "m", "q" if unit is Unit.REQUESTS else "t"]
            n += 1
        if n:
            extra = [max(0.0, now - sent_at), cum_requests, cum_tokens]
            self.budget.spawn(self.keys, self._call_args("set", n, extra, args))
