"""The keys file of ``--keys-file``: one API key per line, named or bare.

A line is ``NAME=KEY`` only when NAME is an identifier (letters, digits and ``_``,
not starting with a digit) and KEY is not empty padding; any other line is a bare
key, named ``<file>:<line>``. So a bare key holding ``=`` (base64 padding,
``abc==``) stays a key and never becomes a label. Blank lines and ``#`` comments
are skipped. A file written like a ``.env`` file works too: ``export NAME=KEY`` and a
key in matching quotes (``NAME="KEY"``) give the key itself. A key is one token (an
HTTP bearer token never holds spaces or quotes): a line whose key still holds any
(an inline ``# comment``, ``Bearer KEY``, an unclosed quote) is refused, since sending
it would fail, and a server naming the key in its refusal would name a string that
is not the one masked. No message ever shows any part of a key: only the file, the
line number and a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError

__all__ = ["key_problem", "parse_keys", "read_keys_file", "unquote_key"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def unquote_key(value: str) -> str:
    """``value`` without one pair of matching surrounding quotes (``"k"``, ``'k'``)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key, in words that never show it; None if it can."""
    if not key:
        return "the key is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "the key holds control characters"
    if key.split(None, 1)[0].lower() in ("bearer", "basic") and len(key.split()) > 1:
        return ("the key starts with 'Bearer': give the key alone (batchproc adds "
                "'Bearer ')")
    if any(ch.isspace() or ch in "\"'" for ch in key):
        return ("the key holds spaces or quotes (an API key never does: an inline "
                "# comment, or an unclosed quote?)")
    return None


def read_keys_file(path: Path) -> list[tuple[str, str]]:
    """Read a keys file into ``(name, key)`` pairs.

    Raises:
        ConfigError: the file cannot be read, is a folder, holds no key, a line is not
            UTF-8 or holds control characters, or a name or a key repeats.
    """
    if path.is_dir():
        raise ConfigError(f"the keys file {path} is a folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the keys file {path}: {exc.strerror}") from None
    return parse_keys(data, path.name, where=os.fspath(path))


def parse_keys(data: bytes, label: str, *, where: str | None = None) -> list[tuple[str, str]]:
    """Parse the bytes of a keys file; bare keys are named ``<label>:<line>``.

    Raises:
        ConfigError: as :func:`read_keys_file`, naming ``where`` (default ``label``).
    """
    where = where or label
    data = data.removeprefix(b"\xef\xbb\xbf")
    keys: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}, line {number}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") and "=" in line:
            line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if sep and _NAME.fullmatch(name) and value.strip("="):
            key = unquote_key(value)
        else:
            name, key = f"{label}:{number}", unquote_key(line)
        problem = key_problem(key)
        if problem is not None:
            raise ConfigError(f"{where}, line {number}: {problem}")
        if name in names:
            raise ConfigError(f"{where}, line {number}: the name {name} is already used on "
                              f"line {names[name]}")
        if key in seen:
            raise ConfigError(f"{where}, line {number}: the same key as line {seen[key]} "
                              "(each key has its own limits; give it once)")
        names[name] = seen[key] = number
        keys.append((name, key))
    if not keys:
        raise ConfigError(f"the keys file {where} holds no key (one per line: NAME=KEY or "
                          "a bare key)")
    return keys
