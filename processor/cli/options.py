"""Option parsing for ``batchproc run``: keys and credential headers, finite numbers,
the event loop and logging. Environment reads live here and in :mod:`.app` only."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import typer

from ..errors import ConfigError
from ..shards import Shard, parse_shard
from .keys import key_problem, read_keys_file, unquote_key

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in LOCAL_HOSTS or host.startswith("127.")


def resolve_keys(
    api_key: str | None, api_key_env: str, keys_file: Path | None
) -> tuple[str | None, list[tuple[str, str]]]:
    """One key, or several named keys (``--api-key-env A,B`` or ``--keys-file``)."""
    if api_key:
        return clean_key(api_key, "--api-key"), []
    names = [n.strip() for n in api_key_env.split(",") if n.strip()]
    if keys_file is not None:
        try:
            return None, read_keys_file(keys_file)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--keys-file") from None
    if len(names) > 1:
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise typer.BadParameter(
                f"no key in ${', $'.join(missing)}", param_hint="--api-key-env")
        return None, [(n, clean_key(os.environ[n], f"${n}")) for n in names]
    found = os.environ.get(names[0]) if names else None
    return (clean_key(found, f"${names[0]}") if found else None), []


def finite(ctx: typer.Context, param: typer.CallbackParam, value: float) -> float:
    """Refuse nan and inf (``min=`` lets nan through: no comparison holds for it)."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def parse_shard_option(value: str | None) -> Shard | None:
    """``--shard K/N``; a usage error (exit 2) when malformed or out of range."""
    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None


#: Headers that carry the API key (OpenAI's and Azure's).
AUTH_HEADERS = ("authorization", "api-key")


def clean_key(value: str, where: str) -> str:
    """A key without surrounding whitespace (a trailing newline from a file, say);
    refused if it holds other control characters. The message never shows the key."""
    key = unquote_key(value.strip())  # quotes kept by docker --env-file and the like
    problem = key_problem(key)
    if problem is not None:
        raise typer.BadParameter(f"the API key in {where}: {problem}")
    return key


def parse_headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in values:
        key, sep, val = item.partition(":")
        if not sep or not key.strip():
            # Not the item itself: it may be a credential missing its colon.
            raise typer.BadParameter("--header wants 'Name: value' (got one without a "
                                     "':'; not shown, it may hold a secret)")
        headers[key.strip()] = val.strip()
    return headers


def split_secret_headers(
    headers: dict[str, str], values: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """``--secret-header 'Name: value'`` adds a header; ``--secret-header Name`` marks
    the ``--header`` of that name. Returns (plain headers, secret headers)."""
    secret: dict[str, str] = {}
    for item in values:
        if ":" in item:
            secret.update(parse_headers([item]))
            continue
        wanted = item.strip().lower()
        named = [k for k in headers if k.lower() == wanted]
        if not named:
            raise typer.BadParameter(
                f"--secret-header {item.strip()!r}: no --header of that name (give "
                "'Name: value' to add one)")
        for name in named:
            secret[name] = headers.pop(name)
    return headers, secret


T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``coro`` on uvloop when asked for or (``auto``) when installed, else asyncio."""
    if loop not in ("auto", "uvloop", "asyncio"):
        coro.close()
        raise typer.BadParameter(f"--loop must be auto, uvloop or asyncio, got {loop!r}")
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                coro.close()
                raise typer.BadParameter(
                    "uvloop is not installed: pip install 'batchproc[fast]'") from None
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def setup_logging(verbose: bool, console: Any | None) -> None:
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if console is not None:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
