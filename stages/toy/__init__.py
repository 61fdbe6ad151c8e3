"""The embedded default model: a tiny LLaDA-V / LaViDa-style dMLLM trained on synthetic scenes on CPU."""

from stages.toy.model import ToyConfig, ToyDMLLM
from stages.toy.tokenizer import ToyTokenizer

__all__ = ["ToyConfig", "ToyDMLLM", "ToyTokenizer"]
