"""The ``--limiter`` URL: checked, masked for messages, and its TLS options.

``redis://[[user]:password@]host:port/db``; ``rediss://`` for TLS; ``unix:///path?db=N``.
TLS options ride in the URL's query under redis-py's own names, so the URL that works
with redis-py (Celery, RQ ...) works here::

    rediss://redis.internal:6380/0?ssl_ca_certs=/etc/ssl/private-ca.pem

- ``ssl_ca_certs=FILE`` the CA certificate(s) (PEM) that signed the server's; without it,
  the system's store (which ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` replace, as OpenSSL
  reads them); ``ssl_ca_path=DIR`` a directory of hashed CA certificates;
- ``ssl_certfile=FILE`` / ``ssl_keyfile=FILE`` (``ssl_password=...``): a client
  certificate, for servers that ask for one (``tls-auth-clients yes``);
- ``ssl_cert_reqs=required|optional|none`` (default ``required``; ``none`` checks nothing
  and is warned about) and ``ssl_check_hostname=true|false`` (default ``true``: the
  certificate must name the host of the URL).

Anything else in the query is refused before a connection is made (redis-py would fail
on it later, or take it silently): a usage error, never an outage to wait out. A server
whose certificate the client does not trust fails closed at the start, saying how to
give the CA (:func:`tls_failure`).
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError

__all__ = ["check_url", "client_options", "connect_hint", "mask_url", "secrets_of", "tls_failure",
           "tls_warning", "was_reset"]

SCHEMES = ("redis", "rediss", "unix")
#: query options whose value is a file (or, for ssl_ca_path, a directory) to read.
FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
FLAGS = {"ssl_cert_reqs": ("required", "optional", "none"),
         "ssl_check_hostname": ("true", "false", "1", "0", "yes", "no")}
TLS_OPTIONS = (*FILES, "ssl_ca_path", "ssl_password", *FLAGS)
#: the query options taken: the TLS ones (rediss:// only) and unix://'s database.
OPTIONS = ("db", *TLS_OPTIONS)
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def mask_url(url: str) -> str:
    """``redis://:***@host:6379/0``: the URL with any password masked (for messages),
    the user's and a ``*password`` option's in the query alike."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            parts = parts._replace(netloc=f"{user}:***@{host}{port}")
        pairs = _query(url)
        if any("password" in name for name, _ in pairs):
            masked = [(n, "***" if "password" in n else v) for n, v in pairs]
            parts = parts._replace(query=urlencode(masked, safe="/*:", quote_via=quote))
        return urlunsplit(parts)
    except ValueError:
        return "<the --limiter URL>"


def secrets_of(url: str) -> list[str]:
    """The URL's passwords (the user's, ``ssl_password``), to mask in error messages."""
    try:
        found = [urlsplit(url).password or ""]
        found += [v for n, v in _query(url) if "password" in n]
    except ValueError:
        return []
    return [s for s in found if s]


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` for a URL that is no Redis URL, or whose options are
    not ones batchproc takes (the message never shows a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # out of range: a ValueError
    except ValueError as exc:
        raise ConfigError(f"--limiter: not a Redis URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"--limiter: expected redis://HOST:PORT/DB or rediss:// (TLS), "
                          f"got {mask_url(url)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"--limiter: no host in {mask_url(url)}")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"--limiter: the database is a number, got {db!r}")
    del port
    _check_options(parts.scheme, _query(url))


def _check_options(scheme: str, pairs: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for name, value in pairs:
        if name not in OPTIONS:
            raise ConfigError(f"--limiter: unknown option {name!r} in the URL (it takes "
                              f"{', '.join(OPTIONS)})")
        if name in seen:
            raise ConfigError(f"--limiter: {name} is given twice in the URL")
        seen.add(name)
        if name in TLS_OPTIONS and scheme != "rediss":
            raise ConfigError(f"--limiter: {name} is a TLS option: it needs rediss://")
        if name == "db" and not value.isdigit():
            raise ConfigError(f"--limiter: db is a number, got {value!r}")
        if name in FLAGS and value.lower() not in FLAGS[name]:
            raise ConfigError(f"--limiter: {name} is one of {', '.join(FLAGS[name])}, "
                              f"got {value!r}")
        if name in FILES or name == "ssl_ca_path":
            _check_path(name, value)
    if "ssl_keyfile" in seen and "ssl_certfile" not in seen:
        raise ConfigError("--limiter: ssl_keyfile needs ssl_certfile (the client certificate)")


def _check_path(name: str, value: str) -> None:
    """The file (or directory) exists and is readable; a CA file holds certificates."""
    want_dir = name == "ssl_ca_path"
    if not value:
        raise ConfigError(f"--limiter: {name} is empty")
    if not (os.path.isdir(value) if want_dir else os.path.isfile(value)):
        what = "directory" if want_dir else "file"
        raise ConfigError(f"--limiter: {name}: no such {what}: {value}")
    if not os.access(value, os.R_OK):
        raise ConfigError(f"--limiter: {name}: cannot read {value}")
    if name == "ssl_ca_certs":
        try:
            ssl.create_default_context().load_verify_locations(cafile=value)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--limiter: ssl_ca_certs: {value} holds no PEM certificate "
                              f"({exc})") from None


def client_options(url: str) -> tuple[str, dict[str, Any]]:
    """The URL for redis-py without the TLS options, and those options as its keyword
    arguments (read once, here, so what was checked is what is used)."""
    parts = urlsplit(url)
    keep = [(n, v) for n, v in _query(url) if n not in TLS_OPTIONS]
    options: dict[str, Any] = {}
    for name, value in _query(url):
        if name == "ssl_check_hostname":
            options[name] = value.lower() in ("true", "1", "yes")
        elif name == "ssl_cert_reqs":
            options[name] = value.lower()
        elif name in TLS_OPTIONS:
            options[name] = value
    return urlunsplit(parts._replace(query=urlencode(keep))), options


def tls_warning(url: str) -> str | None:
    """A warning for a TLS URL that turns the server's certificate check off."""
    options = {n: v.lower() for n, v in _query(url)}
    if options.get("ssl_cert_reqs") == "none":
        return ("--limiter: ssl_cert_reqs=none: the Redis server's certificate is not "
                "checked (anyone on the path can pose as it); give its CA with "
                "ssl_ca_certs=FILE instead")
    if options.get("ssl_check_hostname") in ("false", "0", "no"):
        return ("--limiter: ssl_check_hostname=false: any certificate the CA signed "
                "passes for this server")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(found) < 10:
        found.append(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def tls_failure(exc: BaseException, host: str) -> str | None:
    """Why a TLS connection was refused, in words with the fix, if ``exc`` (or what
    caused it) is a TLS error; None for anything else (an outage, say).

    A certificate the client does not trust does not get better by waiting: the run
    stops at the start (a usage error) instead of waiting for Redis.
    """
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or str(cause)
            if cause.verify_code in _NAME_MISMATCH:
                return (f"the Redis server's TLS certificate does not name {host} ({why}); "
                        "connect by a name the certificate has")
            return (f"the Redis server's TLS certificate is not trusted ({why}); give the CA "
                    "that signed it with ?ssl_ca_certs=/path/to/ca.pem in the --limiter URL "
                    "(or $SSL_CERT_FILE)")
        if isinstance(cause, ssl.SSLError) and not isinstance(
                cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):  # those: cut off, retried
            reason = str(cause.reason or cause)
            if "CERTIFICATE_REQUIRED" in reason:
                return ("the Redis server asks for a client certificate; give it with "
                        "ssl_certfile=FILE&ssl_keyfile=FILE in the --limiter URL")
            if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
                return (f"the Redis server refused our client certificate ({reason}): "
                        "not signed by a CA it trusts")
            return f"the TLS handshake with the Redis server failed ({reason})"
    return None


def was_reset(exc: BaseException) -> bool:
    """The peer reset the connection (``exc`` or what caused it)."""
    return any(isinstance(c, ConnectionResetError) for c in _chain(exc))


def connect_hint(exc: BaseException, scheme: str) -> str:
    """A hint for a first connection that failed in a way a TLS mismatch looks like."""
    causes = _chain(exc)
    if scheme == "redis" and was_reset(exc):
        return "; a TLS port? then use rediss://"
    if scheme == "rediss" and was_reset(exc):
        return ("; does the server ask for a client certificate? then give it with "
                "ssl_certfile=FILE&ssl_keyfile=FILE")
    if scheme == "rediss" and any(isinstance(c, TimeoutError) for c in causes):
        return "; a port without TLS? then use redis://"
    return ""
