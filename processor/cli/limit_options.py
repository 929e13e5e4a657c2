"""The options for limits per model and the shared limiter, for ``run`` and ``estimate``:
``--limit``, ``--limits-file``, ``--shared-bucket``, ``--limit-scope``, ``--limiter``,
``--limiter-namespace`` (one syntax for every command)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..limits.models import (
    LimitPlan,
    ModelLimit,
    Scope,
    parse_limit_spec,
    parse_limits_file,
    parse_shared_bucket,
)
from ..limits.redis import check_url

__all__ = ["LimitOpt", "LimiterNamespaceOpt", "LimiterOpt", "LimitsFileOpt", "ScopeOpt",
           "SharedOpt", "check_namespace", "limit_plan", "limiter_url", "model_limits",
           "redis_password", "scope", "shared_buckets"]

#: environment variables read for the Redis password when the URL has none, in order.
PASSWORD_ENV = ("BATCHPROC_REDIS_PASSWORD", "REDIS_PASSWORD")

LimitOpt = Annotated[list[str] | None, typer.Option(
    "--limit", metavar="MODEL=RPM/TPM(/RPD/TPD)",
    help="One model's limits (repeatable), e.g. --limit gpt-4o=500/30_000 --limit "
    "gpt-4o-mini=5000/2_000_000/-/20_000_000; '-' or nothing leaves one to the bare flag "
    "(or auto). Overrides --rpm/--tpm/--rpd/--tpd for that model.")]
LimitsFileOpt = Annotated[Path | None, typer.Option(
    help="A file of per-model limits: one MODEL=RPM/TPM(/RPD/TPD) a line, '#' comments "
    "(--limit wins for a model given in both).")]
SharedOpt = Annotated[list[str] | None, typer.Option(
    "--shared-bucket", metavar="MODEL,MODEL,...",
    help="Models the server counts in one bucket (an alias and its snapshot), e.g. "
    "gpt-4o,gpt-4o-2024-08-06; limited as the first (repeatable).")]
ScopeOpt = Annotated[str, typer.Option(
    metavar="model|key",
    help="What --rpm/--tpm/--rpd/--tpd count: 'model' (default): each model on its own, as "
    "OpenAI counts; 'key': all of a key's models together, as some proxies do (each model "
    "still held to its own --limit).")]
LimiterOpt = Annotated[str | None, typer.Option(
    "--limiter", metavar="redis://HOST:PORT/DB",
    help="Share the limits through Redis with every process and machine using the same "
    "key and base URL (rediss:// for TLS, the CA in the query: ?ssl_ca_certs=CA.pem, "
    "else the system's store or $SSL_CERT_FILE; a client certificate: &ssl_certfile=F"
    "&ssl_keyfile=F; the password from the URL or "
    "$BATCHPROC_REDIS_PASSWORD / $REDIS_PASSWORD). Nothing is sent without its consent: "
    "while Redis is down the run waits, then stops after --outage-window (exit 75). "
    "Needs the 'redis' extra.")]
LimiterNamespaceOpt = Annotated[str | None, typer.Option(
    help="The first part of the shared counters' names in Redis (default: the base URL's "
    "host and path). Runs share a budget when namespace, key and model match.")]


def model_limits(limit: list[str] | None, limits_file: Path | None) -> dict[str, ModelLimit]:
    """``--limit`` and ``--limits-file`` as limits by model (``--limit`` wins)."""
    found: dict[str, ModelLimit] = {}
    if limits_file is not None:
        try:
            found.update(parse_limits_file(limits_file.read_text(encoding="utf-8")))
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {limits_file}: {exc.strerror}",
                                     param_hint="--limits-file") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"{limits_file}: {exc}", param_hint="--limits-file"
                                     ) from None
    given: set[str] = set()
    for text in limit or []:
        try:
            model, value = parse_limit_spec(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--limit") from None
        if model in given:
            raise typer.BadParameter(f"{model} is given twice", param_hint="--limit")
        given.add(model)
        found[model] = value
    return found


def shared_buckets(groups: list[str] | None) -> list[list[str]]:
    """``--shared-bucket`` values as lists of models."""
    try:
        return [parse_shared_bucket(g) for g in groups or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shared-bucket") from None


def scope(value: str) -> str:
    """``--limit-scope``, checked."""
    try:
        return Scope(value.strip().lower()).value
    except ValueError:
        raise typer.BadParameter(f"'model' or 'key', got {value!r}",
                                 param_hint="--limit-scope") from None


def limiter_url(value: str | None) -> str | None:
    """``--limiter``, checked (the message never shows a password)."""
    if value is None or not value.strip():
        return None
    try:
        check_url(value.strip())
    except ConfigError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--limiter: "),
                                 param_hint="--limiter") from None
    return value.strip()


def redis_password() -> str | None:
    """The Redis password from the environment (used when the URL has none)."""
    for name in PASSWORD_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return None


def limit_plan(defaults: ModelLimit, limit: list[str] | None, limits_file: Path | None,
               shared: list[str] | None, limit_scope: str) -> LimitPlan:
    """The per-model options as one checked :class:`LimitPlan`."""
    try:
        return LimitPlan(defaults, per_model=model_limits(limit, limits_file),
                         shared=shared_buckets(shared), scope=Scope(scope(limit_scope)))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--limit / --shared-bucket") from None


def check_namespace(value: str | None) -> str | None:
    """``--limiter-namespace``, checked: printable, no braces (they tag Redis Cluster
    slots) and no spaces."""
    if value is None:
        return None
    if not value or len(value) > 200 or any(c in value for c in "{} \t\r\n") \
            or not value.isprintable():
        raise typer.BadParameter("1 to 200 printable characters, no spaces or braces",
                                 param_hint="--limiter-namespace")
    return value
