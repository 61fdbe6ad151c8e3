"""Word-level tokenizer of the embedded toy dMLLM.

The vocabulary is closed: five special tokens, the words of the fixed prompt and the caption words of the
synthetic scenes (``stages.synth``). Text is split on single spaces; the comma is a word of its own, as in
the synthetic captions (``"a red circle , a blue square and a green triangle"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from stages.synth import COLOURS, SHAPES

#: Special tokens, in id order: padding, start of sequence, end of answer (fills the answer after the
#: caption, as LLaDA pads with ``<|eot_id|>``), the diffusion mask token and the image placeholder that the
#: projected patch features replace (LLaVA's ``IMAGE_TOKEN_INDEX``).
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<mask>", "<image>")

#: The instruction that follows the image in every prompt.
PROMPT_WORDS: tuple[str, ...] = ("describe", "the", "image")

#: Words of the synthetic captions besides colours and shapes.
CAPTION_WORDS: tuple[str, ...] = ("a", "and", ",")

DEFAULT_VOCAB: tuple[str, ...] = SPECIAL_TOKENS + PROMPT_WORDS + CAPTION_WORDS + COLOURS + SHAPES


class ToyTokenizer:
    """Map space-separated words to ids and back over a closed vocabulary.

    Parameters
    ----------
    vocab : sequence of str, optional
        Tokens in id order; must start with :data:`SPECIAL_TOKENS` and hold no duplicates.
        Default :data:`DEFAULT_VOCAB`.
    """

    def __init__(self, vocab: Sequence[str] | None = None):
        vocab = tuple(DEFAULT_VOCAB if vocab is None else vocab)
        if vocab[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"vocab: must start with the special tokens {SPECIAL_TOKENS}, got {vocab[:5]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab: holds duplicate tokens")
        if any(" " in t or not t for t in vocab):
            raise ValueError("vocab: tokens must be non-empty and contain no spaces")
        self.vocab: list[str] = list(vocab)
        self._ids = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.image_id = range(len(SPECIAL_TOKENS))

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of :data:`SPECIAL_TOKENS`."""
        return tuple(range(len(SPECIAL_TOKENS)))

    def encode(self, text: str) -> list[int]:
        """Ids of the space-separated words of ``text``.

        Raises
        ------
        ValueError
            If a word is not in the vocabulary (the message names it).
        """
        ids = []
        for word in text.split():
            if word not in self._ids:
                raise ValueError(f"text: unknown word {word!r} in {text!r}; the toy vocabulary is {self.vocab}")
            ids.append(self._ids[word])
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The words of ``ids`` joined by spaces; special tokens are dropped when ``skip_special``."""
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"ids: id {i} is outside the vocabulary of {len(self.vocab)} tokens")
            if skip_special and i < len(SPECIAL_TOKENS):
                continue
            words.append(self.vocab[i])
        return " ".join(words)
