"""The failure policy: what to do about one failed attempt, decided apart from doing it.

:func:`decide` is pure: from the error, the request's attempt state and the run's
context it returns one small frozen action, and the engine carries it out (a ``match``
in :meth:`~processor.run.engine.Engine._failed_attempt`). Nothing here sleeps, reads a
clock, writes a file or touches a counter, so every row of the policy is a test row
(tests/test_policy.py).

Actions::

    Retry(delay)            requeue after ``delay`` s; the attempt counts
    Requeue(retry)          requeue now with the attempt given back (an outage's failure,
                            or a refused key's request going to another key)
    SwitchModel(model)      requeue now on the fallback model
    RetireKey(then)         retire the key, then ``then`` (Requeue, or Stop: no key left)
    Fail(code, message)     write the request off (an errors-file record)
    Leave()                 the run is stopping: leave it for a resumed run
    Stop(reason, message)   stop the run (``resume_in``: when a rerun can go on)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..client.headers import MAX_WAIT
from ..errors import (
    APIError,
    AuthError,
    FatalAPIError,
    QuotaExceeded,
    RateLimited,
    RetriesExhausted,
)
from ..stats import StopReason, clock_at, human_duration
from .retry import Fallback, RetryPolicy, is_daily_limit, server_hint

__all__ = ["INSIST_429", "LONG_PAUSE", "NO_KEY_LEFT", "Action", "Attempt", "Context", "Fail",
           "Leave", "Requeue", "RetireKey", "Retry", "Stop", "SwitchModel", "decide",
           "asked_pause", "refuses_model", "rerun_later"]

#: any wait longer than this (a server-requested pause, a spent budget, a limit) stops
#: the run (resumable) instead.
LONG_PAUSE = 3600.0
#: 429s in a row, while the server states a limit that cannot be real, that stop the run.
INSIST_429 = 5


@dataclass(frozen=True, slots=True)
class Retry:
    """Send again after ``delay`` seconds; the failed attempt counts."""

    delay: float


@dataclass(frozen=True, slots=True)
class Requeue:
    """Send again now, the attempt given back; ``retry``: counted as a retry."""

    retry: bool = False


@dataclass(frozen=True, slots=True)
class SwitchModel:
    """Send again now with the fallback ``model``."""

    model: str


@dataclass(frozen=True, slots=True)
class Fail:
    """Write the request off with ``code`` and ``message``."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Leave:
    """The run is stopping: neither retried nor written off (a resumed run sends it)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the run; ``resume_in``: seconds until a rerun can go on, if known."""

    reason: StopReason
    message: str
    resume_in: float | None = None


@dataclass(frozen=True, slots=True)
class RetireKey:
    """Retire the attempt's key (the server refused it), then do ``then``."""

    then: Requeue | Stop


Action = Retry | Requeue | SwitchModel | Fail | Leave | Stop | RetireKey


@dataclass(frozen=True, slots=True)
class Attempt:
    """A request's attempt state, after the failed attempt.

    Attributes:
        attempts: attempts spent, the failed one included.
        model: the model it asks for.
        switched: it was already moved to the fallback model.
        refusals: 429s / model-not-found seen for its model, this one included.
    """

    attempts: int
    model: str | None = None
    switched: bool = False
    refusals: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    """What the run knows when an attempt fails.

    Attributes:
        policy: attempts and backoff.
        fallback: the fallback model, if any.
        key: the key's name in messages (``$NAME``), or "" for the only key.
        keys: how many keys the run has.
        key_retired: the attempt's key was already retired.
        keys_left: keys not retired, the attempt's own included if it is not.
        stopping: the run is stopping.
        outage: the outage circuit counts this failure as the server being down.
        insisted: 429s in a row on this key while it states a limit that cannot be real.
        implausible: that limit, in words ("" if none).
        at: formats "the local time ``s`` seconds from now" (injected for tests).
    """

    policy: RetryPolicy
    fallback: Fallback | None = None
    key: str = ""
    keys: int = 1
    key_retired: bool = False
    keys_left: int = 1
    stopping: bool = False
    outage: bool = False
    insisted: int = 0
    implausible: str = ""
    at: Callable[[float], str] = clock_at


def asked_pause(seconds: float) -> str:
    """A server's pause in words: one at the cap (:data:`MAX_WAIT`, what a Retry-After
    of ten years is read as) is "7d00h or more", not a week the server never asked for.
    (Within a minute of the cap: a pause told later, as admission does, has run a bit.)"""
    return human_duration(seconds) + (" or more" if seconds >= MAX_WAIT - 60 else "")


def rerun_later(wait: float, what: str, at: Callable[[float], str] = clock_at) -> Stop:
    """Stop for a wait of over an hour: exit 75, nothing written off, say when."""
    return Stop(StopReason.RERUN_LATER,
                f"{what} (until {at(wait)}); rerun the same command then to resume", wait)


NO_KEY_LEFT = "every API key was refused (401/403) or has no quota left"


def decide(exc: APIError, attempt: Attempt, ctx: Context) -> Action:
    """What to do about ``exc``, the failure of ``attempt``'s last try (see the module doc).

    The order matters: a stop that speaks for the whole run (a daily limit, a long
    pause, a server that insists) wins over anything about the request; an outage's
    failure does not count; a refused key is the key's fault, not the request's.
    """
    hint = server_hint(exc)
    on_key = f" for key ${ctx.key}" if ctx.key and ctx.keys > 1 else ""
    if isinstance(exc, RateLimited):
        if is_daily_limit(exc):
            when = f" in {human_duration(hint)} (at {ctx.at(hint)})" if hint else ""
            return Stop(StopReason.RERUN_LATER,
                        f"daily limit reached on the server: {exc.message}; it allows "
                        f"more{when}; rerun the same command then to resume", hint or None)
        if ctx.insisted >= INSIST_429:
            return Stop(StopReason.RERUN_LATER,
                        f"the server refused {ctx.insisted} requests in a row (429){on_key} "
                        f"while stating a limit of {ctx.implausible}; rerun the same command "
                        "once its limits are right")
    elif hint is not None and hint > LONG_PAUSE:
        # A 503's Retry-After speaks for the whole server, not one key.
        return rerun_later(hint, f"the server asked to pause for {asked_pause(hint)} "
                                 f"(HTTP {exc.status})", ctx.at)
    if ctx.outage:
        return Leave() if ctx.stopping else Requeue(retry=True)
    if isinstance(exc, (AuthError, QuotaExceeded)):
        return _refused(exc, ctx)
    switch = _fallback(exc, attempt, ctx.fallback)
    if switch is not None:
        return switch
    if isinstance(exc, FatalAPIError):
        return Fail(exc.kind, exc.message)
    if ctx.stopping:
        return Leave()
    if not ctx.policy.should_retry(exc, attempt.attempts):
        # The message is RetriesExhausted's own ("gave up after N attempts: ..."): one
        # wording for the error tree and the errors file.
        return Fail(exc.kind, str(RetriesExhausted(attempt.attempts, exc)))
    delay = ctx.policy.delay(exc, attempt.attempts)
    if isinstance(exc, RateLimited) and delay > LONG_PAUSE:
        delay = 0.0  # the key's pause holds it; another key may take it now
    return Retry(delay)


def _refused(exc: APIError, ctx: Context) -> Action:
    """The key, not the request, is at fault: never written off, so that a rerun with a
    working key sends it."""
    if ctx.keys > 1:
        left = ctx.keys_left - (0 if ctx.key_retired else 1)
        then: Requeue | Stop = (Requeue() if left > 0
                                else Stop(StopReason.KEY_REFUSED, NO_KEY_LEFT))
        return then if ctx.key_retired else RetireKey(then)
    name = f" (${ctx.key})" if ctx.key else ""
    what = "has no quota left" if isinstance(exc, QuotaExceeded) else "was refused"
    return Stop(StopReason.KEY_REFUSED, f"{exc.kind}: the API key{name} {what}: {exc.message}")


def _fallback(exc: APIError, attempt: Attempt, fb: Fallback | None) -> SwitchModel | None:
    """The fallback model after ``fb.after`` 429s, or at once on model-not-found."""
    if fb is None or not refuses_model(exc, attempt.model, fb, attempt.switched):
        return None
    model_missing = exc.status == 404 and exc.code == "model_not_found"
    if attempt.refusals < fb.after and not model_missing:
        return None
    return SwitchModel(fb.model)


def refuses_model(exc: APIError, model: str | None, fb: Fallback | None,
                  switched: bool) -> bool:
    """Whether ``exc`` counts as a refusal of the request's ``model`` (for the fallback):
    a 429 or a model-not-found, while a fallback is set and not yet taken."""
    model_missing = exc.status == 404 and exc.code == "model_not_found"
    return (fb is not None and not switched and model != fb.model
            and (isinstance(exc, RateLimited) or model_missing))
