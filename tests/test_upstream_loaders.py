"""Loaders that fail loudly, pinned against upstream behaviour without real weights (issue 12).

Stand-ins reproduce what the upstream code does that broke the loaders: LaViDa's ``llava.conversation``
loads a tokenizer from the hub at import and its templates load one when none is set (``copy()`` drops
it); LaViDa and LLaDA-V both ship a ``llava`` package; LLaDA's tokenizer marks ``<|eot_id|>`` special
without listing it among its special tokens; a checkpoint that does not match its model loads with
randomly initialised weights unless the loading report is read.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from schemas.errors import DcamError
from stages.capture.families import HFCodec, check_loading_info, reported_weights, require_llava, require_module

CONVERSATION = '''
import dataclasses
from typing import Any
from transformers import AutoTokenizer

# LaViDa's conversation.py loads Dream's tokenizer from the hub when imported.
dream_tokenizer = AutoTokenizer.from_pretrained("Dream-org/Dream-v0-Instruct-7B")


@dataclasses.dataclass
class Conversation:
    roles: tuple
    messages: list
    tokenizer_id: str = "GSAI-ML/LLaDA-8B-Instruct"
    tokenizer: Any = None

    def copy(self):  # as upstream: the tokenizer is not copied
        return Conversation(roles=self.roles, messages=[list(m) for m in self.messages])

    def append_message(self, role, message):
        self.messages.append([role, message])

    def get_prompt(self):
        if self.tokenizer is None:  # upstream: AutoTokenizer.from_pretrained(self.tokenizer_id)
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_id)
        return self.tokenizer.chat(self.messages)


conv_templates = {"llada": Conversation(roles=("user", "assistant"), messages=[])}
'''


def _llava(tmp_path, monkeypatch, marker: str):
    """A stand-in ``llava`` package first on sys.path (LaViDa's marker class or LLaDA-V's)."""
    files = {
        "__init__.py": "",
        "constants.py": "DEFAULT_IMAGE_TOKEN = '<image>'\n",
        "conversation.py": CONVERSATION,
        "mm_utils.py": "def tokenizer_image_token(prompt, tokenizer, image_index):\n"
                       "    return [image_index if w == '<image>' else len(w) for w in prompt.split()]\n",
        "model/__init__.py": "",
        "model/builder.py": "def load_pretrained_model(*a, **k):\n    raise RuntimeError('no weights here')\n",
        "model/language_model/__init__.py": "",
        "model/language_model/llava_llada.py": f"class {marker}:\n    pass\n",
    }
    for name, text in files.items():
        path = tmp_path / "llava" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for name in [m for m in sys.modules if m == "llava" or m.startswith("llava.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))




def test_importing_the_family_code_fetches_nothing_from_a_hub(tmp_path, monkeypatch, llava_cleanup):
    _llava(tmp_path, monkeypatch, "LlavaLladaForMaskedDiffusion")
    conversation = require_module("lavida-llada", "llava.conversation", "LaViDa")
    assert conversation.dream_tokenizer is None
    from transformers import AutoTokenizer

    with pytest.raises(OSError):  # outside the import, a hub id is not fetched either: the hub is off
        AutoTokenizer.from_pretrained("Dream-org/Dream-v0-Instruct-7B")


def test_every_template_gets_the_checkpoints_tokenizer(tmp_path, monkeypatch, llava_cleanup):
    from stages.capture.families.llava_next import IMAGE_TOKEN_INDEX, llava_prompt_builder

    _llava(tmp_path, monkeypatch, "LlavaLladaForMaskedDiffusion")
    tokenizer = SimpleNamespace(chat=lambda messages: " ".join(str(m) for _, m in messages if m))
    ids = llava_prompt_builder(tokenizer, "llada")("what is red")
    assert ids == [IMAGE_TOKEN_INDEX, 4, 2, 3]  # "<image>", "what", "is", "red" (the stand-in's word lengths)


@pytest.mark.parametrize("family,marker,other", [("lavida-llada", "LlavaLladaForMaskedDiffusion", "LlavaLLaDAModelLM"),
                                                 ("llada-v", "LlavaLLaDAModelLM", "LlavaLladaForMaskedDiffusion")])
def test_the_llava_package_must_be_the_familys_own(tmp_path, monkeypatch, llava_cleanup, family, marker, other):
    _llava(tmp_path, monkeypatch, other)
    with pytest.raises(DcamError, match=rf"'llava' package at .*llava is not {family}'s .*no {marker}") as e:
        require_llava(family, marker, "its repository")
    assert "\n" not in str(e.value)
    _llava(tmp_path / "own", monkeypatch, marker)
    require_llava(family, marker, "its repository")


def _llada_like_tokenizer():
    """Word-level tokenizer configured like LLaDA's: ``<|eot_id|>`` special in ``added_tokens_decoder``, not
    listed in ``additional_special_tokens``; ``<|endoftext|>`` the EOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "Ġa", "Ġred", "Ġcir", "cle", "Ġblue", "<|endoftext|>"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Replace("Ġ", " ")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", unk_token="<unk>")
    tok.add_tokens([AddedToken("<|eot_id|>", special=True)])
    return tok


def test_a_llada_response_ends_at_eot_and_eot_never_glues_onto_a_word():
    from stages.capture.families import LLADA_EOS_ID, llada_stop_ids

    tok = _llada_like_tokenizer()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot not in tok.all_special_ids and tok.added_tokens_decoder[eot].special  # the upstream configuration
    a, red, cir, cle, blue = (tok.convert_tokens_to_ids(t) for t in ("Ġa", "Ġred", "Ġcir", "cle", "Ġblue"))
    codec = HFCodec(tok, (tok.eos_token_id, eot))
    ids = [a, red, cir, cle, eot, blue, red]
    assert codec.word_groups(ids) == [("a", [0]), ("red", [1]), ("circle", [2, 3])]
    assert codec.decode(ids).split() == ["a", "red", "circle"]
    unlisted = HFCodec(tok)  # without stop tokens: eot is still never part of a word
    assert [w for w, _ in unlisted.word_groups([a, red, eot])] == ["a", "red"]
    assert llada_stop_ids("llada-v", tok) == (LLADA_EOS_ID, eot)
    with pytest.raises(DcamError, match="no <|eot_id|> token"):
        llada_stop_ids("llada-v", SimpleNamespace(get_vocab=lambda: {"a": 0}))


def test_a_checkpoint_missing_a_weight_is_an_error_naming_it(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["extra.weight"] = torch.zeros(2)
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    with pytest.raises(DcamError, match=r"1 missing weight\(s\): model.layers.0.mlp.up_proj.weight; "
                                        r"1 unexpected weight\(s\): extra.weight"):
        check_loading_info("diffusion-gemma", info)
    check_loading_info("diffusion-gemma", {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []})


def test_the_weights_transformers_4_reports_while_a_builder_loads_are_an_error():
    log = logging.getLogger("transformers.modeling_utils")
    with pytest.raises(DcamError, match=r"2 missing weight\(s\): model.mm_projector.0.bias, model.mm_projector.0.weight"):
        with reported_weights("lavida-llada"):  # the message of transformers 4.50's _load_pretrained_model
            log.warning("Some weights of LlavaLladaForMaskedDiffusion were not initialized from the model checkpoint "
                        "at /ckpt and are newly initialized: ['model.mm_projector.0.weight', 'model.mm_projector.0.bias']"
                        "\nYou should probably TRAIN this model on a down-stream task to be able to use it for "
                        "predictions and inference.")
    with reported_weights("lavida-llada"):
        log.warning("All the weights were used.")


def test_the_mmada_grid_comes_from_num_vq_tokens(tmp_path):
    from stages.capture.families.mmada import MMadaAdapter, mmada_grid
    from stages.capture.families import WordCodec
    from stages.capture.replicas import MMadaReplica, MMadaSpec, replica_tokenizer

    assert mmada_grid(SimpleNamespace(num_vq_tokens=1024)) == (32, 32)
    with pytest.raises(DcamError, match="num_vq_tokens"):
        mmada_grid(SimpleNamespace(num_vq_tokens=1000))
    tok = replica_tokenizer()
    model = MMadaReplica(len(tok), MMadaSpec(resolution=256, patch=16)).eval()
    assert model.config.num_vq_tokens == 256
    adapter = MMadaAdapter(model, WordCodec(tok), text_vocab_size=len(tok), mask_id=tok.mask_id, eos_id=tok.eos_id,
                           gen_length=8)
    span = adapter.prepare(np.zeros((64, 64, 3), np.uint8)).span
    assert adapter.grid == (16, 16) and (span.grid_h, span.grid_w) == (16, 16) and span.end - span.start == 256


@pytest.mark.parametrize("family", ["lavida-llada", "lavida-dream"])
def test_load_lavida_with_stand_ins_casts_to_bf16_and_sets_the_familys_ids(tmp_path, monkeypatch, llava_cleanup,
                                                                           family):
    """LaViDa's builder leaves SigLIP in fp16; predict.py casts the whole model to bf16. Dream's mask id is its
    config's 151666 whatever the tokenizer says; LLaDA stops at <|eot_id|>, Dream at <|im_end|>."""
    from tokenizers import AddedToken

    from stages.capture.families import LLADA_MASK_ID
    from stages.capture.families.lavida import DREAM_MASK_ID, load_lavida

    _llava(tmp_path, monkeypatch, "LlavaLladaForMaskedDiffusion")
    tower = tmp_path / "siglip"
    tower.mkdir()
    monkeypatch.setenv("LAVIDA_VISION_TOWER", str(tower))
    tok = _llada_like_tokenizer()
    tok.add_tokens([AddedToken("<|im_end|>", special=True)])
    tok.add_special_tokens({"mask_token": "<unk>"})  # a tokenizer mask id that is not Dream's

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Linear(2, 2).to(torch.bfloat16)
            self.vision_tower = torch.nn.Linear(2, 2).to(torch.float16)  # as LaViDa's builder leaves it
            self.config = SimpleNamespace()

        def tie_weights(self):
            pass

    model = Model()
    builder = require_module(family, "llava.model.builder", "LaViDa")
    monkeypatch.setattr(builder, "load_pretrained_model", lambda *a, **k: (tok, model, None, None))
    adapter = load_lavida(family, str(tmp_path), "cpu")
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}
    stop = "<|eot_id|>" if family == "lavida-llada" else "<|im_end|>"
    assert adapter.mask_id == (LLADA_MASK_ID if family == "lavida-llada" else DREAM_MASK_ID)
    assert tok.convert_tokens_to_ids(stop) in adapter.codec.stop_ids
