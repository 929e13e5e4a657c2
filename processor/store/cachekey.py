"""What makes two requests the same: the response cache's key, and which requests are
meant to repeat.

The key is a 16-byte BLAKE2b digest over, in this order::

    b"batchproc-cache-v1\\0" host b"\\0" [rules] path b"\\0" canonical body

- ``host``: the base URL's host, lowercased, with the port when the URL names one
  (``api.openai.com``, ``127.0.0.1:8000``); never its user info (a ``user:pass@``).
- ``rules``, only with a ``--cache-ignore`` list other than the default: ``b"\\1ignore="``,
  the sorted names comma-joined, ``b"\\0"`` (so runs that leave out other fields never
  share keys; the path that follows always begins with ``/``).
- ``path``: the path (and query) the request is posted to, the base URL's path joined
  with the endpoint (``/v1/chat/completions``), so two gateways on one host differ.
- canonical body: the request body with the left-out top-level fields removed,
  serialised by ``orjson.dumps(body, option=OPT_SORT_KEYS)``: keys sorted at every
  depth, no whitespace, non-ASCII text as UTF-8. Numbers are kept as written (``1``
  and ``1.0`` differ), list order matters.

Nothing about credentials enters the key: no header, no API key, no fingerprint of one.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..client.http import join_url

__all__ = ["DEFAULT_IGNORE", "KEY_BYTES", "CacheMode", "KeyMaker", "Share", "parse_ignore",
           "repeatable"]

#: top-level body fields left out of the key by default: they label a request (who
#: asked, what to store it under) but do not change the answer.
DEFAULT_IGNORE: tuple[str, ...] = ("metadata", "user", "store", "safety_identifier",
                                   "prompt_cache_key")
KEY_BYTES = 16
_TAG = b"batchproc-cache-v1\0"
#: endpoints whose answers do not sample: the same request gives the same answer.
_UNSAMPLED = ("/embeddings", "/moderations")


class CacheMode(str, enum.Enum):
    """What ``--cache-mode`` lets the cache do."""

    ALL = "all"
    """Look every request up; store every successful answer (the default)."""
    DETERMINISTIC = "deterministic"
    """Only requests meant to repeat (:func:`repeatable`) are looked up and stored."""
    READ_ONLY = "read-only"
    """Serve hits, store nothing (a shared, curated cache)."""
    REFRESH = "refresh"
    """Look nothing up: send every request, store (replace) the answers."""

    @property
    def reads(self) -> bool:
        return self is not CacheMode.REFRESH

    @property
    def writes(self) -> bool:
        return self is not CacheMode.READ_ONLY


class Share(str, enum.Enum):
    """What ``--single-flight`` sends once."""

    ALL = "all"
    """Identical requests in flight at once are sent once (the default)."""
    DETERMINISTIC = "deterministic"
    """Only requests meant to repeat (:func:`repeatable`); sampled ones each go."""
    OFF = "off"


def repeatable(path: str, body: Mapping[str, Any]) -> bool:
    """Whether the API means ``body`` to give the same answer twice.

    True for endpoints that do not sample (embeddings, moderations), and for requests
    with ``temperature`` 0 or a ``seed``. False for the rest: they sample (the default
    temperature is 1), ``n`` > 1 above all.
    """
    if path.split("?", 1)[0].rstrip("/").endswith(_UNSAMPLED):
        return True
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and temperature == 0)


def parse_ignore(text: str) -> tuple[str, ...]:
    """``--cache-ignore``: comma-separated top-level field names; ``none`` (or an empty
    string) leaves nothing out.

    Raises:
        ValueError: a name that cannot be a JSON field of a body (empty between commas,
            spaces, a dot: only top-level fields can be left out).
    """
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not name or any(c.isspace() for c in name) or "." in name:
            raise ValueError(f"not a top-level field name: {name!r} (give names like "
                             "'user,metadata', or 'none')")
    return tuple(dict.fromkeys(names))


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


class KeyMaker:
    """Makes the key of a request sent to one base URL.

    Args:
        base_url: where the run sends its requests.
        ignore: top-level body fields left out of the key.
    """

    __slots__ = ("_prefix", "_base", "_ignore", "_paths")

    def __init__(self, base_url: str, ignore: Iterable[str] = DEFAULT_IGNORE) -> None:
        self._base = base_url
        self._ignore = frozenset(ignore)
        # Another list of left-out fields is another notion of "the same request": its
        # keys never meet the default's (nor another list's) in a shared file, where one
        # run's "temperature does not matter" would answer another run that never said so.
        rules = b"" if self._ignore == frozenset(DEFAULT_IGNORE) else (
            b"\1ignore=" + ",".join(sorted(self._ignore)).encode() + b"\0")
        self._prefix = _TAG + _host(base_url).encode() + b"\0" + rules
        self._paths: dict[str, bytes] = {}

    def path(self, endpoint: str) -> bytes:
        """The path (and query) ``endpoint`` is posted to."""
        found = self._paths.get(endpoint)
        if found is None:
            parts = urlsplit(join_url(self._base, endpoint))
            found = (parts.path + (f"?{parts.query}" if parts.query else "")).encode()
            if len(self._paths) < 1024:  # a run uses a handful of endpoints
                self._paths[endpoint] = found
        return found

    def __call__(self, endpoint: str, body: Mapping[str, Any]) -> bytes:
        """The 16-byte key of ``body`` posted to ``endpoint``.

        Raises:
            orjson.JSONEncodeError: the body cannot be serialised.
        """
        ignore = self._ignore
        if ignore and not ignore.isdisjoint(body):
            body = {k: v for k, v in body.items() if k not in ignore}
        digest = hashlib.blake2b(self._prefix, digest_size=KEY_BYTES)
        digest.update(self.path(endpoint))
        digest.update(b"\0")
        digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        return digest.digest()
