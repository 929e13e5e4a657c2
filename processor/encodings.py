"""Which tiktoken encoding a model uses, and building one from a local file.

Kept apart from :mod:`processor.tokens` (the pricing rules): this is the tokenizer
plumbing, with the patterns and published hashes of the two encodings OpenAI's
current models use.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import tiktoken

from .images import base_model_name

__all__ = ["encoding_from_file", "encoding_name_for_model"]


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
