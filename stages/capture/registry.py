"""Model families the capture stage knows: ``--model FAMILY[:PATH]``.

A new family is one adapter file plus one entry in :data:`FAMILIES`. Everything else that needs the list of
families reads it here: ``dcam models``, ``--model`` parsing and loading, the tiny replicas
(:func:`stages.capture.replicas.build_replica`), the weights digest of a capture, and the tests.

An entry names its code as ``"module:attribute"`` strings, imported on first use, so importing the registry
imports no family's code (nor torch, nor anything that could reach a hub); a test may put the objects
themselves in an entry instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from schemas.errors import DcamError

if TYPE_CHECKING:
    from stages.capture.adapter import ModelAdapter

#: A ``"module:attribute"`` reference, or the object itself.
Ref = Union[str, Any]


def resolve(ref: Ref) -> Any:
    """The object a :data:`Ref` names (a non-string is returned as it is).

    Raises
    ------
    ValueError
        If a string reference is not ``"module:attribute"``.
    """
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"reference: expected 'module:attribute', got {ref!r}")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes
    ----------
    name : str
        What ``--model`` takes before the colon.
    summary : str
        The architecture and image layout, one sentence for ``dcam models``.
    needs : str
        What must be installed to load a checkpoint.
    loader : Ref
        ``loader(path: str | None, device: str) -> ModelAdapter``.
    adapter : Ref
        The family's :class:`~stages.capture.adapter.ModelAdapter` subclass (what ``loader`` returns).
    needs_path : bool
        Whether ``--model`` must name a checkpoint directory.
    defaults : str
        The sampler defaults the adapter declares and where they come from (its upstream), for ``dcam models``.
    replica : Ref or None
        ``replica(gen_length: int) -> ModelAdapter``: the adapter around a tiny random-initialised replica
        (torch's seed set by the caller); None for a family without one.
    default_checkpoint : Ref or None
        The weights loaded when ``--model`` names no path (the toy's bundled ones).
    """

    name: str
    summary: str
    needs: str
    loader: Ref
    adapter: Ref
    needs_path: bool = True
    defaults: str = "even split (LLaDA), temperature 0, steps = generation length"
    replica: Ref | None = None
    default_checkpoint: Ref | None = None

    def adapter_class(self) -> type:
        """The adapter class (imports the family's module)."""
        return resolve(self.adapter)

    def checkpoint(self, path: str | None) -> str | None:
        """The checkpoint to load: ``path``, else :attr:`default_checkpoint`, else None."""
        if path is not None or self.default_checkpoint is None:
            return path
        return str(resolve(self.default_checkpoint))

    def load(self, path: str | None, device: str) -> ModelAdapter:
        """Load a checkpoint (None: the default one) and check what its adapter declares.

        Raises
        ------
        DcamError
            If loading fails, or the adapter is not the entry's class or declares something out of range.
        """
        return self.checked(resolve(self.loader)(self.checkpoint(path), device))

    def checked(self, adapter: ModelAdapter) -> ModelAdapter:
        """``adapter`` after checking it is this family's class and its declarations (one-line DcamError)."""
        from stages.capture.adapter import check_adapter

        cls = self.adapter_class()
        if not isinstance(adapter, cls) or adapter.family != self.name:
            raise DcamError(f"family {self.name}: its loader returned {type(adapter).__name__} of family "
                            f"{getattr(adapter, 'family', None)!r}, not a {cls.__name__} of family {self.name!r}")
        return check_adapter(adapter)


FAMILIES: dict[str, Family] = {
    "toy": Family(
        "toy",
        "the embedded tiny dMLLM (SigLIP patches -> mlp2x_gelu -> bidirectional Llama), 12x12 grid",
        "nothing beyond diffusion-cam; weights ship with it (toy:PATH loads other weights)",
        "stages.capture.toy_adapter:load_toy",
        "stages.capture.toy_adapter:ToyAdapter",
        needs_path=False,
        default_checkpoint="stages.toy.model:BUNDLED_WEIGHTS",
    ),
    "lavida-llada": Family(
        "lavida-llada",
        "LaViDa-LLaDA (paper's model): SigLIP -> mlp2x_gelu -> LLaDA-8B blocks; anyres base + 2x2 views, 2x2 "
        "bilinear pooling, newline per grid row; default mode prefix-cache (Prefix-DLM), also full",
        "LaViDa's repo (jacklishufan/LaViDa, pip install -e .) with its pins (transformers==4.50.3, deepspeed); "
        "LAVIDA_VISION_TOWER = local siglip-so400m-patch14-384",
        "stages.capture.families.lavida:load_lavida_llada",
        "stages.capture.families.lavida:LavidaLladaAdapter",
        defaults="LaViDa's predict.py: shift schedule (shift 3), temperature 0.1, steps = 0.5 x generation length "
                 "(--schedule even --temperature 0 --steps N for LLaDA's even split)",
        replica="stages.capture.replicas:lavida_llada_replica_adapter",
    ),
    "lavida-dream": Family(
        "lavida-dream",
        "LaViDa-Dream: LaViDa's vision layout on a Dream-7B (Qwen2-derived) trunk, logits shifted by one; "
        "default mode prefix-cache, also full",
        "LaViDa's repo (jacklishufan/LaViDa) with its pins (transformers==4.50.3, deepspeed); "
        "LAVIDA_VISION_TOWER = local siglip-so400m-patch14-384",
        "stages.capture.families.lavida:load_lavida_dream",
        "stages.capture.families.lavida:LavidaDreamAdapter",
        defaults="LaViDa's llava_dream generate: Dream's entropy algorithm (negative-entropy confidence), Dream's "
                 "schedule, temperature 0.2, top-p 0.95, one block (--remasking low_confidence --schedule even "
                 "--temperature 0 --top-p 1 for LLaDA's)",
        replica="stages.capture.replicas:lavida_dream_replica_adapter",
    ),
    "llada-v": Family(
        "llada-v",
        "LLaDA-V: SigLIP2 -> mlp2x_gelu -> HF-Llama-style LLaDA-8B; anyres_max_4, no pooling, newline per row; "
        "full recompute every step (mode full only)",
        "LLaDA-V's repo (ML-GSAI/LLaDA-V, train/ on PYTHONPATH) with its pins (transformers 4.4x)",
        "stages.capture.families.llada_v:load_llada_v",
        "stages.capture.families.llada_v:LladaVAdapter",
        replica="stages.capture.replicas:llada_v_replica_adapter",
    ),
    "mmada": Family(
        "mmada",
        "MMaDA: no vision encoder; MAGVIT-v2 image codes (32x32 grid) between <|soi|> and <|eoi|> on an LLaDA "
        "trunk; maps on the token grid; mode full only",
        "MMaDA's repo (Gen-Verse/MMaDA on PYTHONPATH) with its pins (transformers==4.46.0, diffusers==0.32.2); "
        "MMADA_VQ_MODEL = local showlab/magvitv2",
        "stages.capture.families.mmada:load_mmada",
        "stages.capture.families.mmada:MMadaAdapter",
        replica="stages.capture.replicas:mmada_replica_adapter",
    ),
    "diffusion-gemma": Family(
        "diffusion-gemma",
        "DiffusionGemma (transformers): image soft tokens in the prompt encoder, canvas denoised by the decoder "
        "through the encoder cache; default mode prefix-cache; one canvas",
        "transformers >= 5 (diffusion_gemma, already installed) and a local checkpoint with its processor files",
        "stages.capture.families.diffusion_gemma:load_diffusion_gemma",
        "stages.capture.families.diffusion_gemma:DiffusionGemmaAdapter",
        defaults="generate()'s own: canvas of random tokens, entropy-bound acceptance (0.1), uniform re-noising, "
                 "self-conditioning, temperature 0.8 -> 0.4, 48 steps (no adaptive early stop); --temperature, "
                 "--schedule, --remasking do not apply",
        replica="stages.capture.replicas:diffusion_gemma_replica_adapter",
    ),
}


def replica_families() -> tuple[str, ...]:
    """The registered families that have a tiny replica, in registry order."""
    return tuple(name for name, fam in FAMILIES.items() if fam.replica is not None)


def get_family(name: str, *, flag: str = "--model") -> Family:
    """The registry entry of ``name``, or a one-line DcamError listing the known ones."""
    if name not in FAMILIES:
        raise DcamError(f"{flag}: unknown family {name!r}; known: {', '.join(FAMILIES)} (see 'dcam models')")
    return FAMILIES[name]


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``FAMILY[:PATH]`` as (family, path or None); a one-line DcamError for an unknown family or missing path."""
    family, _, path = spec.partition(":")
    if get_family(family).needs_path and not path:
        raise DcamError(f"--model: {family} needs a local checkpoint path, e.g. --model {family}:/path/to/checkpoint")
    return family, path or None


def checkpoint_path(spec: str) -> str | None:
    """The checkpoint ``FAMILY[:PATH]`` loads: PATH, else the family's default one, else None."""
    family, path = parse_model_spec(spec)
    return FAMILIES[family].checkpoint(path)


def load_adapter(spec: str, *, device: str = "cpu") -> ModelAdapter:
    """Load the adapter named by ``FAMILY[:PATH]`` (its declarations checked)."""
    family, path = parse_model_spec(spec)
    return FAMILIES[family].load(path, device)
