"""The response cache on the command line: the ``run`` command's cache options
(:func:`cache_config`) and the ``batchproc cache stats|prune`` commands."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from ..errors import ConfigError
from ..run.config import JobConfig
from ..store.cacheadmin import cache_stats, parse_age, parse_size, prune
from ..store.cachekey import DEFAULT_IGNORE, CacheMode, Share, parse_ignore
from .exits import EXIT_USAGE

__all__ = ["CACHE_HELP", "DEFAULT_IGNORE_TEXT", "CacheIgnoreOption", "CacheModeOption",
           "CacheOption", "SingleFlightOption", "cache_config", "configure", "default_cache_path",
           "register_cache"]

DEFAULT_IGNORE_TEXT = ",".join(DEFAULT_IGNORE)
CACHE_HELP = ("Response cache, a SQLite file: answers stored there are written without a "
              "request; new answers are stored. 'default' for "
              "~/.cache/batchproc/responses.sqlite ($XDG_CACHE_HOME respected), 'off' for "
              "none. Also $BATCHPROC_CACHE.")


# The run command's options (typer reads them from app.py's signature).
CacheOption = Annotated[str | None, typer.Option(
    metavar="PATH|default|off", envvar="BATCHPROC_CACHE", help=CACHE_HELP)]
CacheModeOption = Annotated[str, typer.Option(
    help="all: look up and store every request; deterministic: only those meant to "
    "repeat (temperature 0, a seed, embeddings); read-only: store nothing; refresh: "
    "look nothing up, store (replace) every answer.")]
CacheIgnoreOption = Annotated[str, typer.Option(
    help="Top-level body fields left out of the cache key (comma-separated; 'none').")]
SingleFlightOption = Annotated[str, typer.Option(
    help="Identical requests in flight at once are sent once, the answer written for "
    "each: all, deterministic (as for --cache-mode) or off.")]

_PATH_HELP = "The cache file (default: $BATCHPROC_CACHE, else the default location)."


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/batchproc/responses.sqlite``, else under ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "batchproc" / "responses.sqlite"


def _cache_path(value: str | None) -> Path | None:
    if value is None or value.strip().lower() in ("", "off", "none", "no"):
        return None
    if value.strip().lower() == "default":
        return default_cache_path()
    return Path(value).expanduser()


def configure(config: JobConfig, cache: str | None, mode: str, ignore: str,
              single_flight: str) -> None:
    """Set ``config``'s cache and single-flight fields from the run command's options.

    Raises:
        typer.BadParameter: see :func:`cache_config`.
    """
    config.cache_path, config.cache_mode, config.cache_ignore, config.single_flight = \
        cache_config(cache, mode, ignore, single_flight)


def cache_config(cache: str | None, mode: str, ignore: str, single_flight: str
                 ) -> tuple[str | None, str, tuple[str, ...], str]:
    """``(cache_path, cache_mode, cache_ignore, single_flight)`` for the JobConfig.

    Raises:
        typer.BadParameter: a mode or field list that is not one.
    """
    modes = [m.value for m in CacheMode]
    if mode not in modes:
        raise typer.BadParameter(f"must be one of {', '.join(modes)}", param_hint="--cache-mode")
    shares = [s.value for s in Share]
    if single_flight not in shares:
        raise typer.BadParameter(f"must be one of {', '.join(shares)}",
                                 param_hint="--single-flight")
    try:
        fields = parse_ignore(ignore)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cache-ignore") from None
    path = _cache_path(cache)
    return (str(path) if path else None), mode, fields, single_flight


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    age = max(0.0, time.time() - stamp)
    days = age / 86_400
    ago = f"{days:.1f} days ago" if days >= 1 else f"{age / 3600:.1f} hours ago"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp))} ({ago})"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _path_arg(path: Path | None) -> Path:
    found = path or _cache_path(os.environ.get("BATCHPROC_CACHE")) or default_cache_path()
    if not found.is_file():
        typer.echo(f"error: no cache at {found}", err=True)
        raise typer.Exit(EXIT_USAGE)
    return found


def register_cache(app: typer.Typer) -> None:
    """Add ``cache stats`` and ``cache prune`` to ``app``."""
    group = typer.Typer(help="Look after a response cache (see run --cache).",
                        no_args_is_help=True)

    @group.command("stats")
    def stats(
        path: Annotated[Path | None, typer.Argument(metavar="[PATH]", help=_PATH_HELP)] = None,
        json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")]
        = False,
    ) -> None:
        """Entries, size, hits, oldest and newest answer."""
        try:
            s = cache_stats(_path_arg(path))
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        if json:
            typer.echo(orjson.dumps(s.to_dict()).decode())
            return
        models = ", ".join(f"{m or '?'}: {n:,}" for m, n in s.models.items()) or "-"
        typer.echo("\n".join([
            f"cache:    {s.path}",
            f"entries:  {s.entries:,} ({_mib(s.body_bytes)} of answers; file {_mib(s.file_bytes)})",
            f"hits:     {s.hits:,} (last {_when(s.last_hit)})",
            f"oldest:   {_when(s.oldest)}",
            f"newest:   {_when(s.newest)}",
            f"models:   {models}",
        ]))

    @group.command("prune")
    def prune_cmd(
        path: Annotated[Path | None, typer.Argument(metavar="[PATH]", help=_PATH_HELP)] = None,
        older_than: Annotated[str | None, typer.Option(
            help="Delete answers stored longer ago than this: 30d, 12h, 90m, 2w, 1d12h.")]
        = None,
        max_size: Annotated[str | None, typer.Option(
            help="Then delete the oldest answers until the rest fit: 500M, 2G (implies "
            "--vacuum).")] = None,
        vacuum: Annotated[bool, typer.Option(
            "--vacuum", help="Shrink the file afterwards (else SQLite reuses the space).")]
        = False,
    ) -> None:
        """Delete old answers (safe while runs use the cache)."""
        try:
            age = parse_age(older_than) if older_than is not None else None
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--older-than") from None
        try:
            size = parse_size(max_size) if max_size is not None else None
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--max-size") from None
        if age is None and size is None:
            raise typer.BadParameter("give --older-than and/or --max-size")
        try:
            done = prune(_path_arg(path), older_than=age, max_bytes=size, vacuum=vacuum)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        typer.echo(f"deleted {done.deleted:,} answers, {done.left:,} left; file "
                   f"{_mib(done.bytes_before)} -> {_mib(done.bytes_after)}")

    app.add_typer(group, name="cache")
