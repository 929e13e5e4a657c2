"""Masking secrets (API keys, credential headers) wherever a server might echo them.

A :class:`Masker` knows the secrets of one client and replaces each with ``***`` in raw
answer bytes, in decoded JSON (every string, keys included, at any depth: a key sent
back as ``"sk-\\u0061bc..."`` only shows itself once decoded), in text bodies (also
HTML-entity and percent-decoded), in request ids, error messages and redirect targets.

The rule for short values: a secret shorter than :data:`MIN_SECRET_LEN` (8) characters is
not masked in answers, because it cannot be told apart from ordinary text (a key ``k``
would mask every ``k``). batchproc itself never writes or logs any header value, short
or long; real API keys are far longer.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit, urlunsplit

__all__ = ["CREDENTIAL_HEADERS", "MASK", "MIN_SECRET_LEN", "Masker", "header_secrets",
           "is_credential_header"]

MASK = "***"
MIN_SECRET_LEN = 8

#: Headers whose values are credentials, whatever the user says.
CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "api-key", "x-api-key", "cookie",
    "ocp-apim-subscription-key",
})
# Names that say "credential" in other vendors' words (X-Auth-Token, X-Goog-Api-Key,
# X-Amz-Security-Token, ...): masked too; masking a value that was not secret costs nothing.
_SECRET_NAME = re.compile(r"key|token|secret|auth|passw|cookie|signature|credential", re.I)


def is_credential_header(name: str) -> bool:
    """True for a header whose value is a credential (by its name)."""
    lower = name.strip().lower()
    return lower in CREDENTIAL_HEADERS or bool(_SECRET_NAME.search(lower))


def header_secrets(name: str, value: str) -> list[str]:
    """The strings to mask for a credential header: the whole value, and the parts a
    server may echo on their own (the token after ``Bearer``, a Basic password, each
    cookie's value)."""
    value = value.strip()
    parts = [value]
    lower = name.strip().lower()
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if token and lower in ("authorization", "proxy-authorization"):
        parts.append(token)
        if scheme.lower() == "basic":
            try:
                user_pass = base64.b64decode(token, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                pass
            else:
                parts += [user_pass, user_pass.partition(":")[2]]
    elif lower == "cookie":
        for item in value.split(";"):
            parts.append(item.partition("=")[2].strip())
    return [p for p in parts if p]


class Masker:
    """Replaces known secrets with ``***``.

    Args:
        secrets: the strings to hide; those shorter than :data:`MIN_SECRET_LEN` are left
            out (see the module docstring).
    """

    __slots__ = ("_bytes", "_escapes", "_patterns", "_secrets", "active")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_LEN}
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted(unique, key=len, reverse=True)
        #: there is something to mask (a plain attribute: asked once per answer).
        self.active = bool(self._secrets)
        self._bytes = [s.encode() for s in self._secrets]  # encoded once, not per answer
        # re's literal search is several times faster than ``bytes in bytes`` on
        # digit-heavy bodies (embeddings) for keys that hold digits: 7 us, not 57, per
        # 22 KB answer.
        self._patterns = [re.compile(re.escape(b)) for b in self._bytes]
        # The JSON escapes that can spell a secret's characters: \u always; \/, \" and
        # \\ only when some secret holds /, " or \ (\n, \t ... never: secrets hold no
        # control characters). Raw bytes with none of them decode to the same text.
        escapes = "u"
        for char in "/\"\\":
            if any(char in s for s in self._secrets):
                escapes += char
        self._escapes = re.compile(rb"\\[" + re.escape(escapes.encode()) + rb"]")

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:  # never the secrets
        return f"Masker({len(self._secrets)} secrets)"

    def text(self, text: str) -> str:
        """``text`` with every secret replaced (the same object when none is in it)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def raw(self, raw: bytes | bytearray) -> bytes | bytearray:
        """Raw bytes with every secret's UTF-8 bytes replaced."""
        for secret, pattern in zip(self._bytes, self._patterns, strict=True):
            if pattern.search(raw):
                raw = raw.replace(secret, b"***")
        return raw

    def may_hide(self, raw: bytes | bytearray) -> bool:
        """True when JSON ``raw`` holds escapes that could spell a secret once decoded
        (the fast path: without them, masking the raw bytes was enough)."""
        # No backslash at all (memchr, the common case) settles it at once.
        return bool(self._secrets) and raw.find(b"\\") >= 0 and bool(
            self._escapes.search(raw))

    def tree(self, obj: Any) -> Any:
        """Mask every string of decoded JSON (values and keys, at any depth) in place;
        returns the (possibly new) root. Iterative: orjson nests deeper than Python's
        recursion limit."""
        if isinstance(obj, str):
            return self.text(obj)
        stack = [obj]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                renamed = []
                for key, value in node.items():
                    if isinstance(value, str):
                        masked = self.text(value)
                        if masked is not value:
                            node[key] = masked  # a value, not a key: iteration is safe
                    elif isinstance(value, (dict, list)):
                        stack.append(value)
                    if self.text(key) is not key:
                        renamed.append(key)
                for key in renamed:
                    node[self.text(key)] = node.pop(key)
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    if isinstance(value, str):
                        masked = self.text(value)
                        if masked is not value:
                            node[i] = masked
                    elif isinstance(value, (dict, list)):
                        stack.append(value)
        return obj

    def loose_text(self, text: str) -> str:
        """A text body (an HTML page, a proxy's message) with secrets masked, also where
        they hide behind HTML entities or percent-encoding (then the decoded text is kept)."""
        text = self.text(text)
        if not self._secrets:
            return text
        for decode in (html.unescape, unquote):
            decoded = decode(text)
            if decoded is not text and self.text(decoded) is not decoded:
                text = self.text(decoded)
        return text

    def url(self, location: str, base: str | None = None) -> str:
        """A URL fit to show: made absolute against ``base``, userinfo, every query value
        and the fragment masked, secrets masked in the (percent-decoded) path."""
        try:
            absolute = urljoin(base, location) if base else location
            parts = urlsplit(absolute)
            host = parts.hostname or ""
            port = parts.port
        except ValueError:
            return "(a Location that is not a valid URL)"
        netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        if parts.username is not None or parts.password is not None:
            netloc = f"{MASK}@{netloc}"
        path = self.loose_text(parts.path)
        query = "&".join(
            f"{self.loose_text(k)}={MASK if v else ''}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        fragment = MASK if parts.fragment else ""
        shown = self.text(urlunsplit((parts.scheme, netloc, path, query, fragment)))
        return shown if len(shown) <= 300 else shown[:300] + "..."
