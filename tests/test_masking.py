"""Masking secrets (processor.client.masking): raw bytes, decoded JSON, text bodies, URLs."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.client.http import classify
from processor.client.masking import Masker, header_secrets, is_credential_header
from processor.errors import ServerError
from tests.hostile import escape_json

KEY = "sk-proj-abc123DEF456ghi789"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Authorization", "Bearer tok-123456789", ["Bearer tok-123456789", "tok-123456789"]),
        ("proxy-authorization", "Basic " + base64.b64encode(b"me:pa55word!").decode(),
         ["Basic bWU6cGE1NXdvcmQh", "bWU6cGE1NXdvcmQh", "me:pa55word!", "pa55word!"]),
        ("Cookie", "session=abcdefgh123; theme=dark", ["session=abcdefgh123; theme=dark",
                                                      "abcdefgh123", "dark"]),
        ("api-key", " azurekey0123 ", ["azurekey0123"]),
        ("Authorization", "Basic !!notbase64", ["Basic !!notbase64", "!!notbase64"]),
    ],
    ids=["bearer", "basic", "cookie", "plain", "bad-basic"],
)
def test_header_secrets(name: str, value: str, expected: list[str]) -> None:
    assert header_secrets(name, value) == expected


@pytest.mark.parametrize(
    ("name", "secret"),
    [("Authorization", True), ("api-key", True), ("X-API-Key", True), ("Cookie", True),
     ("Proxy-Authorization", True), ("Ocp-Apim-Subscription-Key", True),
     ("X-Auth-Token", True), ("x-goog-api-key", True), ("OpenAI-Organization", False),
     ("OpenAI-Project", False), ("User-Agent", False)],
)
def test_is_credential_header(name: str, secret: bool) -> None:
    assert is_credential_header(name) is secret


def test_short_values_are_not_masked() -> None:
    masker = Masker(["k", "1234567", None, ""])
    assert not masker
    assert masker.text("kkk 1234567") == "kkk 1234567"
    assert Masker(["12345678"]).text("a 12345678 b") == "a *** b"


def test_longest_secret_first() -> None:
    masker = Masker(["abcdefgh", "abcdefgh-and-more"])
    assert masker.text("x abcdefgh-and-more y abcdefgh") == "x *** y ***"


def test_repr_shows_no_secret() -> None:
    assert KEY not in repr(Masker([KEY]))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": ' + escape_json(KEY).encode() + b"}",
        b'{"a": "sk-proj-\\u0061bc123DEF456ghi789"}',
        b'{"deep": [[[{"x": ["' + KEY.encode() + b'"]}]]]}',
        b'{' + escape_json(KEY).encode() + b': 1}',
        b'[' * 600 + escape_json(KEY).encode() + b']' * 600,
    ],
    ids=["all-escaped", "one-escape", "deep", "as-a-key", "deeper-than-recursion"],
)
def test_decoded_json_is_masked(raw: bytes) -> None:
    masker = Masker([KEY])
    body = orjson.loads(masker.raw(raw))
    if masker.may_hide(raw):
        body = masker.tree(body)
    strings = _strings(body)
    assert not any(KEY in text for text in strings)
    assert any("***" in text for text in strings)


def _strings(obj: Any) -> list[str]:
    """Every string of a decoded JSON document, keys included (iteratively: it may be
    deeper than orjson.dumps or Python's recursion go)."""
    found, stack = [], [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            found += list(node)
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return found


def test_slash_and_quote_escapes_matter_only_for_secrets_holding_them() -> None:
    token = 'abc/def"ghi\\jkl'
    masker = Masker([token])
    raw = b'{"t": "abc\\/def\\"ghi\\\\jkl"}'  # the token, spelt with \/, \" and \\
    assert orjson.loads(raw) == {"t": token}
    assert token.encode() not in raw and masker.may_hide(raw)
    assert masker.may_hide(b'"abc\\/def"')
    assert masker.tree(orjson.loads(raw)) == {"t": "***"}
    plain = Masker([KEY])
    assert not plain.may_hide(b'{"t": "line\\nbreak \\/ \\""}')  # no \u: nothing hidden
    assert plain.may_hide(b'{"t": "\\u0041"}')


def test_no_walk_without_secrets_or_backslashes() -> None:
    assert not Masker([]).may_hide(b'"\\u0041"')
    assert not Masker([KEY]).may_hide(b'{"embedding": [0.1, 0.2]}')


@pytest.mark.parametrize(
    "text",
    [f"<p>{''.join(f'&#{ord(c)};' for c in KEY)}</p>",
     f"<p>{''.join(f'&#x{ord(c):x};' for c in KEY)}</p>",
     "key=" + "".join(f"%{b:02X}" for b in KEY.encode()),
     f"plain {KEY} text"],
    ids=["decimal-entities", "hex-entities", "percent", "plain"],
)
def test_text_bodies_are_masked_also_behind_entities(text: str) -> None:
    masked = Masker([KEY]).loose_text(text)
    assert KEY not in masked and "***" in masked


@pytest.mark.parametrize(
    ("location", "base", "shown"),
    [
        ("https://other.example/v1/chat?api-key=" + KEY, None,
         "https://other.example/v1/chat?api-key=***"),
        ("https://u:" + KEY + "@h.example:8443/p#f", None, "https://***@h.example:8443/p#***"),
        ("/moved/" + KEY.replace("-", "%2D"), "http://127.0.0.1:5/v1/x",
         "http://127.0.0.1:5/moved/***"),
        ("//[::1]:9/x?a=&b=1", "http://127.0.0.1/", "http://[::1]:9/x?a=&b=***"),
        ("http://[::1/x", None, "(a Location that is not a valid URL)"),
        ("http://h.example:99999/x", None, "(a Location that is not a valid URL)"),
    ],
    ids=["query", "userinfo-fragment", "relative-percent-path", "ipv6-blank", "bad-ipv6",
         "bad-port"],
)
def test_url_is_shown_masked(location: str, base: str | None, shown: str) -> None:
    assert Masker([KEY]).url(location, base) == shown


def test_url_is_cut_to_300_characters() -> None:
    assert len(Masker([]).url("https://h.example/" + "a" * 1000)) == 303


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=20,
), st.sampled_from(["", KEY, "x" + KEY + "y"]))
def test_any_json_with_the_key_hidden_anywhere_is_masked(doc: Any, where: str) -> None:
    # Put the key in a string somewhere (or not), escape every non-ASCII character the
    # way Python's json does, and check nothing of the key survives classify().
    tree = {"choices": [], "payload": doc, where or "k": [where, {where: where}]}
    raw = orjson.dumps(tree)
    escaped = raw.decode().encode("ascii", "backslashreplace")  # \xNN / \uNNNN forms
    for body in (raw, escaped.replace(b"\\x", b"\\u00")):
        try:
            decoded = classify(200, body, {}, Masker([KEY])).body
        except ServerError:
            continue  # backslashreplace of a raw backslash may break the JSON: fine
        assert KEY not in orjson.dumps(decoded).decode()
