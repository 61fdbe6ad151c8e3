"""Adapters of the real dMLLM families (LaViDa-LLaDA, LaViDa-Dream, LLaDA-V, MMaDA, DiffusionGemma).

Every adapter works on the real model (loaded with the family's own code from a local checkpoint) and on
the tiny replica of :mod:`stages.capture.replicas`, which has the same module paths, sequence layout and
loop. This module holds what the families share: the text side (a word codec for replicas, an HF
tokenizer codec for checkpoints) and the one-line loading errors.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from schemas.errors import DcamError

#: Prompt of the replicas (words of the toy vocabulary).
REPLICA_PROMPT = "describe the image"


class WordCodec:
    """Text side of a replica: the word-level toy tokenizer.

    Parameters
    ----------
    tokenizer : ToyTokenizer
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.special_ids) | {
            i for i, t in enumerate(tokenizer.vocab) if t.startswith("<")
        }

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokenizer.vocab[i] for i in ids if i < len(self.tokenizer) and i not in self.special)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        return [
            (self.tokenizer.vocab[i], [p]) for p, i in enumerate(ids) if i < len(self.tokenizer) and i not in self.special
        ]


class HFCodec:
    """Text side of a real checkpoint: its Hugging Face tokenizer.

    Words are runs of sub-tokens; a new word starts at a token whose text begins with a space marker
    (``Ġ`` byte-level BPE, ``▁`` SentencePiece) or a space. Special tokens are dropped.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        groups: list[tuple[list[int], list[int]]] = []
        for p, i in enumerate(ids):
            if i in self.special:
                continue
            piece = self.tokenizer.convert_ids_to_tokens(int(i))
            starts = not groups or piece[:1] in ("Ġ", "▁", " ")
            if starts:
                groups.append(([int(i)], [p]))
            else:
                groups[-1][0].append(int(i))
                groups[-1][1].append(p)
        out = []
        for tok_ids, pos in groups:
            word = self.tokenizer.decode(tok_ids, skip_special_tokens=True).strip()
            if word:
                out.append((word, pos))
        return out


def require_path(family: str, path: str | None) -> Path:
    """The checkpoint directory, or one line naming what is missing."""
    if not path:
        raise DcamError(f"--model {family}: needs a local checkpoint path, e.g. --model {family}:/path/to/checkpoint")
    p = Path(path)
    if not p.is_dir():
        raise DcamError(f"--model {family}: checkpoint directory {p} not found")
    return p


def require_module(family: str, module: str, needs: str):
    """Import the family's own code, or one line saying what must be installed."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or the repo's import-time failures (deepspeed, flash-attn, ...)
        raise DcamError(
            f"--model {family}: cannot import {module} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"needs {needs}"
        ) from None


def load_hf_tokenizer(family: str, path: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise DcamError(f"--model {family}: cannot load the tokenizer from {path} ({type(exc).__name__})") from None
