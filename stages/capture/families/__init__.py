"""Adapters of the real dMLLM families (LaViDa-LLaDA, LaViDa-Dream, LLaDA-V, MMaDA, DiffusionGemma).

Every adapter works on the real model (loaded with the family's own code from a local checkpoint) and on
the tiny replica of :mod:`stages.capture.replicas`, which has the same module paths, sequence layout and
loop. This module holds what the families share: the text side (a word codec for replicas, an HF
tokenizer codec for checkpoints) and the one-line loading errors.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

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
    (``Ġ`` byte-level BPE, ``▁`` SentencePiece) or a space. Special tokens are dropped: those the tokenizer
    lists, and every added token marked special (LLaDA's ``<|eot_id|>`` is one without being listed).
    The response ends at its first stop token: nothing from there on is text or a word.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    stop_ids : sequence of int
        The family's stop tokens (EOS and the end-of-turn tokens its generation stops at).
    """

    def __init__(self, tokenizer, stop_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special = set(tokenizer.all_special_ids) | {int(i) for i, t in added.items() if getattr(t, "special", False)}
        self.stop_ids = frozenset(int(i) for i in stop_ids)

    def response(self, ids: Sequence[int]) -> list[int]:
        """The ids before the first stop token."""
        out = []
        for i in ids:
            if int(i) in self.stop_ids:
                break
            out.append(int(i))
        return out

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        kept = [i for i in self.response(ids) if i not in self.special]
        return self.tokenizer.decode(kept, skip_special_tokens=True)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        groups: list[tuple[list[int], list[int]]] = []
        for p, i in enumerate(self.response(ids)):
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


def token_ids(family: str, tokenizer, tokens: Sequence[str]) -> tuple[int, ...]:
    """The ids of ``tokens`` in the tokenizer's vocabulary, or one line naming those it lacks."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise DcamError(f"--model {family}: the tokenizer has no {', '.join(missing)} token; is this the family's checkpoint?")
    return tuple(int(vocab[t]) for t in tokens)


#: LLaDA's mask and end-of-text ids (LLaDA's generate.py, LaViDa's llava_llada.py); the LLaDA trunks of
#: LaViDa-LLaDA, LLaDA-V and MMaDA share them.
LLADA_MASK_ID, LLADA_EOS_ID = 126336, 126081


def llada_stop_ids(family: str, tokenizer) -> tuple[int, ...]:
    """Where a LLaDA response ends: end-of-text and ``<|eot_id|>`` (126348; LLaDA-V's loop stops there). The
    tokenizer marks ``<|eot_id|>`` special without listing it among its special tokens, so it is looked up."""
    return (LLADA_EOS_ID, *token_ids(family, tokenizer, ("<|eot_id|>",)))


def require_path(family: str, path: str | None) -> Path:
    """The checkpoint directory, or one line naming what is missing."""
    if not path:
        raise DcamError(f"--model {family}: needs a local checkpoint path, e.g. --model {family}:/path/to/checkpoint")
    p = Path(path)
    if not p.is_dir():
        raise DcamError(f"--model {family}: checkpoint directory {p} not found")
    return p


def require_module(family: str, module: str, needs: str):
    """Import the family's own code, or one line saying what must be installed.

    Nothing is fetched from a hub while importing: a module-level ``from_pretrained`` of a hub id (LaViDa's
    ``llava.conversation`` loads Dream's tokenizer so) gets None, as in the official Diffusion-CAM's copy;
    this tool always passes the checkpoint's own tokenizer.
    """
    try:
        with no_hub_loads():
            return importlib.import_module(module)
    except Exception as exc:  # ImportError, or the repo's import-time failures (deepspeed, flash-attn, ...)
        raise DcamError(
            f"--model {family}: cannot import {module} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"needs {needs}"
        ) from None


@contextlib.contextmanager
def no_hub_loads() -> Iterator[None]:
    """``AutoTokenizer.from_pretrained`` of anything but a local directory returns None inside the block."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        yield
        return
    original = AutoTokenizer.from_pretrained

    def local_only(name, *args, **kwargs):
        return original(name, *args, **kwargs) if os.path.isdir(str(name)) else None

    AutoTokenizer.from_pretrained = local_only
    try:
        yield
    finally:
        AutoTokenizer.from_pretrained = original


def require_llava(family: str, marker: str, needs: str) -> None:
    """Check that the importable ``llava`` package is the family's own (LaViDa and LLaDA-V both ship one).

    ``marker`` is the class only the family's ``llava.model.language_model.llava_llada`` defines.
    """
    module = require_module(family, "llava.model.language_model.llava_llada", needs)
    if not hasattr(module, marker):
        import llava  # type: ignore

        raise DcamError(
            f"--model {family}: the 'llava' package at {Path(llava.__file__).parent} is not {family}'s (its "
            f"llava_llada has no {marker}); put {family}'s repository first on PYTHONPATH"
        )


def check_loading_info(family: str, info: dict[str, Any]) -> None:
    """One line naming the weights a checkpoint lacks or has in excess (``from_pretrained(output_loading_info=True)``).

    A model built from a checkpoint that does not match would run on randomly initialised weights.
    """
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "mismatched")):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(key) or ()))
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {what} weight(s): {shown}")
    if problems:
        raise DcamError(f"--model {family}: the checkpoint does not match the model: {'; '.join(problems)}")


@contextlib.contextmanager
def reported_weights(family: str) -> Iterator[None]:
    """Fail on the weights transformers reports as newly initialised or unused while loading inside the block.

    For loaders that call ``from_pretrained`` themselves (the LLaVA builders), where
    ``output_loading_info`` cannot be passed through; transformers 4.x logs those keys at warning level.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("transformers.modeling_utils")
    handler, level = Collect(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    info: dict[str, list[str]] = {}
    for m in messages:
        lines = m.splitlines()
        if "shapes did not match" in lines[0]:  # then one "- key: found shape ..." line per key
            info["mismatched_keys"] = [ln[2:].split(":")[0] for ln in lines[1:] if ln.startswith("- ")]
        elif "newly initialized" in lines[0] or "were not used when initializing" in lines[0]:
            keys = lines[0][lines[0].rindex(": ") + 2 :]
            info["missing_keys" if "newly initialized" in lines[0] else "unexpected_keys"] = _key_list(keys)
    check_loading_info(family, info)


def _key_list(text: str) -> list[str]:
    import ast

    try:
        keys = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return [text.strip()]
    return [str(k) for k in keys] if isinstance(keys, (list, tuple)) else [str(keys)]


def load_hf_tokenizer(family: str, path: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise DcamError(f"--model {family}: cannot load the tokenizer from {path} ({type(exc).__name__})") from None
