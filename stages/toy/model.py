"""The embedded toy dMLLM: a tiny LLaDA-V / LaViDa-style diffusion multimodal LLM.

Layout (the names follow LLaVA-style models, so hooks written for it read like hooks for real dMLLMs)::

    pixel_values (B, 3, 96, 96)
      -> local_pixel_features  RGB + chroma + 4 oriented edge energies (fixed, 3x3 neighbourhood)
      -> vision_tower   SiglipVisionModel, 0 encoder layers: patch embed + position embed + post-LN
      -> projector      mlp2x_gelu (Linear - GELU - Linear), one feature per 8x8 patch, 12x12 grid
      -> spliced into   <bos> <image> describe the image  (the <image> placeholder becomes 144 tokens,
                        row-major over the grid, as LLaVA replaces its -200 placeholder)
      -> language_model LlamaModel with config.is_causal = False (bidirectional, LLaDA), sdpa attention
      -> lm_head        bias-free Linear to the toy vocabulary

followed by ``gen_length`` answer positions that start as ``<mask>`` and are filled by the masked-diffusion
sampler (:mod:`stages.dmllm.sampler`); after the caption the answer is padded with ``<eos>``.

Why the vision tower has no encoder layers: Grad-CAM reads gradients at image positions of a middle LM
block. If the vision tower mixed patches globally (SigLIP self-attention), every image token could carry
the colour of every object and the attributions would be at chance even with perfect answers (measured in
``reference/dmllm.md`` §3.4). With 0 layers each image token is a function of its own 8x8 patch and
position only, so all spatial mixing happens in the LM, where the capture stage observes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from schemas.errors import DcamError
from stages.toy.tokenizer import PROMPT_WORDS, ToyTokenizer

#: Where the bundled weights live.
BUNDLED_WEIGHTS = Path(__file__).parent / "weights"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "toy-dmllm.safetensors"

#: SigLIP normalisation (mean 0.5, std 0.5 per channel).
_PIXEL_MEAN = 0.5
_PIXEL_STD = 0.5

LOGITS_MODES = ("full", "prefix-cache")


@dataclass
class ToyConfig:
    """Dimensions of :class:`ToyDMLLM`, serialised as ``config.json`` next to the weights.

    Attributes
    ----------
    vocab : list of str
        The tokenizer's vocabulary in id order.
    image_size, patch_size : int
        Input resolution and patch size; the grid is ``image_size // patch_size`` on each side.
    vision_hidden_size : int
        Width of the patch embedding.
    hidden_size, intermediate_size, num_layers, num_heads : int
        The Llama language model.
    gen_length : int
        Number of answer positions.
    local_features : bool
        Feed the vision tower :func:`local_pixel_features` (8 channels) instead of plain RGB.
    training : dict
        Provenance of the weights (seed, steps, measured time and accuracies); not used by the model.
    """

    vocab: list[str] = field(default_factory=lambda: ToyTokenizer().vocab)
    image_size: int = 96
    patch_size: int = 8
    vision_hidden_size: int = 192
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    gen_length: int = 16
    local_features: bool = True
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide image_size {self.image_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}")
        if self.gen_length < 1:
            raise ValueError(f"gen_length: must be >= 1, got {self.gen_length}")


#: Sobel kernel along x; its transpose differentiates along y.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

#: Channels of :func:`local_pixel_features`.
LOCAL_FEATURE_CHANNELS = 8


#: Per-channel mean and standard deviation of the raw :func:`local_pixel_features` channels over synthetic
#: scenes (256 training scenes, seed 3), used to standardise them.
_FEATURE_MEAN = (-0.015, -0.025, -0.025, -0.846, -0.975, -0.975, -0.971, -0.971)
_FEATURE_STD = (0.278, 0.267, 0.278, 0.327, 0.149, 0.147, 0.147, 0.147)


def local_pixel_features(pixel_values: torch.Tensor) -> torch.Tensor:
    """RGB plus fixed per-pixel chroma and oriented edge energy, standardised: the input of the toy vision tower.

    A 0-layer SigLIP sees each 8x8 patch only through one linear map, and a tiny model trained for minutes
    never learned shape from RGB alone (shape accuracy stayed at chance after 1100 steps, colour was
    learned). These parameter-free channels make "which edge orientations are in this patch" linear in
    the input while keeping every feature local (a 3x3 neighbourhood), so image tokens still describe only
    their own patch and Grad-CAM can localise.

    Each channel is standardised with fixed constants (:data:`_FEATURE_MEAN`, :data:`_FEATURE_STD`). The
    edge channels are near their minimum almost everywhere (mean -0.975, std 0.15 before standardising);
    unstandardised, the patch embedding learned per-patch shape about 3x slower (measured: 0.26 against
    0.75 patch-level shape accuracy of the vision tower alone after 100 steps).

    Parameters
    ----------
    pixel_values : Tensor of shape (B, 3, H, W)
        Normalised RGB in [-1, 1].

    Returns
    -------
    Tensor of shape (B, 8, H, W)
        RGB; chroma (max minus min of R, G, B), which separates the saturated objects from the grey
        background whatever their colour; the absolute Sobel response of the chroma along x, y and the two
        diagonals. Each about zero-mean and unit-variance over synthetic scenes.
    """
    chroma = pixel_values.amax(dim=1, keepdim=True) - pixel_values.amin(dim=1, keepdim=True)  # in [0, 2]
    kx = _SOBEL_X.to(pixel_values)
    kernels = torch.stack([kx, kx.T, (kx + kx.T) / 2**0.5, (kx - kx.T) / 2**0.5]).unsqueeze(1)
    edges = torch.nn.functional.conv2d(torch.nn.functional.pad(chroma, (1, 1, 1, 1), mode="replicate"), kernels)
    raw = torch.cat([pixel_values, chroma - 1.0, edges.abs() / 4.0 - 1.0], dim=1)
    mean = torch.tensor(_FEATURE_MEAN, dtype=raw.dtype, device=raw.device).view(1, -1, 1, 1)
    std = torch.tensor(_FEATURE_STD, dtype=raw.dtype, device=raw.device).view(1, -1, 1, 1)
    return (raw - mean) / std


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """2-D sine-cosine position table (MAE-style), scaled to SigLIP's initial std ``1 / sqrt(dim)``.

    Used only to initialise the (learned) SigLIP position embedding: a table where row and column are
    linear-readable from the start lets a small model learn "left to right" in far fewer steps than from
    SigLIP's random normal init, at the same scale relative to the patch embedding.

    Returns
    -------
    Tensor of shape (grid[0] * grid[1], dim)
        Row-major over the grid; the first half of the channels encodes the row, the second the column.
    """
    if dim % 4:
        raise ValueError(f"dim: must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(rows), encode(cols)], dim=1)
    return (table / table.std() / dim**0.5).float()


class ToyDMLLM(nn.Module):
    """Tiny masked-diffusion multimodal LLM (see the module docstring for the layout).

    Parameters
    ----------
    config : ToyConfig, optional
        Dimensions; default :class:`ToyConfig()`.
    """

    def __init__(self, config: ToyConfig | None = None):
        super().__init__()
        self.config = config = config or ToyConfig()
        self.tokenizer = ToyTokenizer(config.vocab)
        side = config.image_size // config.patch_size
        self.grid: tuple[int, int] = (side, side)
        self.gen_length: int = config.gen_length

        self.vision_tower = SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=config.vision_hidden_size,
                intermediate_size=2 * config.vision_hidden_size,
                num_hidden_layers=0,
                num_attention_heads=4,
                image_size=config.image_size,
                patch_size=config.patch_size,
                num_channels=LOCAL_FEATURE_CHANNELS if config.local_features else 3,
                vision_use_head=False,
                attn_implementation="sdpa",
            )
        )
        embeddings = self.vision_tower.embeddings
        with torch.no_grad():
            embeddings.position_embedding.weight.copy_(sincos_position_embedding(self.grid, config.vision_hidden_size))
        self.projector = nn.Sequential(
            nn.Linear(config.vision_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        lm_config = LlamaConfig(
            vocab_size=len(self.tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=256,
            pad_token_id=self.tokenizer.pad_id,
            bos_token_id=self.tokenizer.bos_id,
            eos_token_id=self.tokenizer.eos_id,
            attn_implementation="sdpa",  # the default eager path materialises masks and trains ~6x slower
        )
        lm_config.is_causal = False  # transformers >= 5 then builds bidirectional masks (LLaDA)
        self.language_model = LlamaModel(lm_config)
        self.lm_head = nn.Linear(config.hidden_size, len(self.tokenizer), bias=False)

        self._prompt_ids = [self.tokenizer.bos_id, self.tokenizer.image_id, *self.tokenizer.encode(" ".join(PROMPT_WORDS))]

    # ----------------------------------------------------------------------------------------------- I/O

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> ToyDMLLM:
        """Load a model saved by :meth:`save_pretrained`.

        Parameters
        ----------
        path : str or Path, optional
            Directory holding ``config.json`` and ``toy-dmllm.safetensors``; None loads the bundled weights.

        Raises
        ------
        DcamError
            If the directory or one of its files is missing.
        """
        from safetensors.torch import load_file

        directory = BUNDLED_WEIGHTS if path is None else Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise DcamError(f"toy model: {directory / name} not found (expected a directory written by save_pretrained)")
        config = ToyConfig(**json.loads((directory / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return model.eval()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``toy-dmllm.safetensors`` (fp32) into ``directory``; returns it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME)
        return directory

    # ----------------------------------------------------------------------------------------- inputs

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Resize an RGB image to the model's resolution and normalise it.

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8

        Returns
        -------
        Tensor of shape (1, 3, S, S), float32
            ``S = config.image_size``; values in [-1, 1].
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        size = self.config.image_size
        if image.shape[:2] != (size, size):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)
        return ((pixels - _PIXEL_MEAN) / _PIXEL_STD).unsqueeze(0)

    def prompt_ids(self) -> list[int]:
        """Ids of the prompt ``<bos> <image> describe the image``, with the single ``<image>`` placeholder."""
        return list(self._prompt_ids)

    @property
    def num_image_tokens(self) -> int:
        """Number of image tokens that replace the placeholder (``grid[0] * grid[1]``)."""
        return self.grid[0] * self.grid[1]

    @property
    def prefix_length(self) -> int:
        """Length of the prompt after the placeholder is replaced by the image tokens."""
        return len(self._prompt_ids) - 1 + self.num_image_tokens

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` of shape (B, L) as (B, L, d)."""
        return self.language_model.embed_tokens(ids)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch features (B, grid[0] * grid[1], d), row-major over the grid."""
        if self.config.local_features:
            pixel_values = local_pixel_features(pixel_values)
        patches = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        return self.projector(patches)

    def embed_prompt(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Prompt embeddings with the image features spliced in at the placeholder.

        Parameters
        ----------
        pixel_values : Tensor of shape (B, 3, S, S)
            From :meth:`preprocess`.

        Returns
        -------
        inputs_embeds : Tensor of shape (B, P, d)
            ``P = prefix_length``.
        image_span : tuple of 2 int
            ``[start, end)`` positions of the image tokens in ``inputs_embeds``.
        """
        batch = pixel_values.shape[0]
        ids = torch.tensor(self._prompt_ids, device=pixel_values.device).unsqueeze(0).expand(batch, -1)
        text = self.embed_tokens(ids)
        start = self._prompt_ids.index(self.tokenizer.image_id)
        features = self.image_features(pixel_values).to(text.dtype)
        inputs_embeds = torch.cat([text[:, :start], features, text[:, start + 1 :]], dim=1)
        return inputs_embeds, (start, start + features.shape[1])

    # --------------------------------------------------------------------------------------- forward

    def lm_forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, DynamicCache | None]:
        """Run ``language_model`` and ``lm_head``.

        Parameters
        ----------
        inputs_embeds : Tensor of shape (B, L, d)
        attention_mask : bool Tensor of shape (B, 1, L, K), optional
            True where query row may attend to key column (``K`` = cached + current length); None attends
            everywhere (fully bidirectional).
        past_key_values : DynamicCache, optional
        position_ids : LongTensor of shape (B, L), optional
            Default: positions continue after the cache.
        use_cache : bool

        Returns
        -------
        logits : Tensor of shape (B, L, V)
        past_key_values : DynamicCache or None
        """
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=past_key_values,
            position_ids=position_ids,
            use_cache=use_cache,
        )
        return self.lm_head(out.last_hidden_state), out.cache

    def prefix_dlm_mask(self, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
        """The Prefix-DLM attention mask of LaViDa over prompt + answer.

        Returns
        -------
        bool Tensor of shape (batch, 1, L, L)
            ``L = prefix_length + gen_length``; prompt rows cannot see answer columns, everything else is
            visible.
        """
        p, total = self.prefix_length, self.prefix_length + self.gen_length
        mask = torch.ones(total, total, dtype=torch.bool, device=device)
        mask[:p, p:] = False
        return mask.expand(batch, 1, total, total)

    def make_logits_fn(self, pixel_values: torch.Tensor, *, mode: str = "full") -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``logits_fn`` for :func:`stages.dmllm.sampler.masked_diffusion_sample` on one image.

        Parameters
        ----------
        pixel_values : Tensor of shape (1, 3, S, S)
        mode : {"full", "prefix-cache"}
            ``"full"``: every call recomputes prompt + image + answer with no attention mask (LLaDA-V,
            MMaDA). ``"prefix-cache"``: the prompt + image pass runs once, here, with ``use_cache=True``;
            every call runs only the answer against that cache at positions ``P..P+G-1`` and then crops the
            cache back to the prefix, so it never grows (LaViDa's Prefix-DLM inference).

        Returns
        -------
        callable
            ``logits_fn(x)`` with ``x`` a LongTensor of shape (1, gen_length) returns logits of shape
            (1, gen_length, V). Runs under the caller's grad mode (the prefix pass too, so a caller that
            wants gradients at image positions in prefix-cache mode builds the function with grad on). In
            prefix-cache mode it carries the prefix ``DynamicCache`` as its ``cache`` attribute.
        """
        if mode not in LOGITS_MODES:
            raise ValueError(f"mode: expected one of {LOGITS_MODES}, got {mode!r}")
        if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
            raise ValueError(f"pixel_values: expected shape (1, 3, S, S), got {tuple(pixel_values.shape)}")
        prefix, _ = self.embed_prompt(pixel_values)
        p, g = prefix.shape[1], self.gen_length

        def check(x: torch.Tensor) -> None:
            if x.shape != (1, g):
                raise ValueError(f"x: expected shape (1, {g}), got {tuple(x.shape)}")

        if mode == "full":

            def full_logits(x: torch.Tensor) -> torch.Tensor:
                check(x)
                logits, _ = self.lm_forward(torch.cat([prefix, self.embed_tokens(x)], dim=1))
                return logits[:, p:]

            return full_logits

        _, cache = self.lm_forward(prefix, use_cache=True)
        positions = torch.arange(p, p + g, device=prefix.device).unsqueeze(0)

        def prefix_cache_logits(x: torch.Tensor) -> torch.Tensor:
            check(x)
            logits, _ = self.lm_forward(self.embed_tokens(x), past_key_values=cache, position_ids=positions, use_cache=True)
            cache.crop(-g)  # transformers 5: a negative argument removes that many tokens
            return logits

        prefix_cache_logits.cache = cache
        return prefix_cache_logits
