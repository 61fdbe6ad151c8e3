"""The run configuration (YAML) that drives every flow, validated by pydantic.

Example (``flows/configs/demo.yaml``)::

    name: demo
    root: artifacts/demo
    dataset: {synth: {count: 12, seed: 0}}
    capture: {model: toy, mode: full, steps: 16}
    explain:
      presets: [diffusion-cam, diffusion-cam-reference, gradcam, llava-cam, tam]
    shard_size: 6
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.errors import DcamError
from schemas.limits import check_yaml


class SynthSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(12, ge=1)
    seed: int = Field(0, ge=0)
    size: int = Field(96, ge=48)


class DatasetSpec(BaseModel):
    """Either an existing dataset ``path`` or a synthetic set to generate."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    synth: SynthSpec | None = None
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> "DatasetSpec":
        if (self.path is None) == (self.synth is None):
            raise ValueError("dataset: give exactly one of 'path' or 'synth'")
        return self


class CaptureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "toy"
    mode: Literal["full", "prefix-cache"] | None = Field(None, description="default: the model family's own")
    layers: list[int] | None = None
    steps: int | None = Field(None, ge=1)
    block_length: int | None = Field(None, ge=1)
    seed: int = 0
    temperature: float = Field(0.0, ge=0)
    score: Literal["logit", "contrastive"] = "logit"
    store_grads: bool = False
    record: Literal["unmask-step", "all"] = Field(
        "unmask-step", description="what to record: each target at its unmask step (what the unmask-step "
                                   "policy reads), or every (step, target) pair (any policy)")
    device: str = "cpu"


class ChainOverride(BaseModel):
    """A custom chain (or a preset with changed parameters / module order)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    preset: str | None = Field(None, description="start from this preset")
    base: str | None = None
    base_options: dict[str, Any] | None = None
    modules: list[str] | None = Field(None, description="post-processing modules in order; [] removes all")
    profile: Literal["reference", "paper"] | None = None
    params: dict[str, dict[str, Any]] | None = None
    threshold: float | None = None


class ExplainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["unmask-step", "first-feasible", "last-feasible", "all-feasible-mean", "explicit"] = "unmask-step"
    steps: list[int] | None = None
    layers: list[int] | None = None
    presets: list[str] = Field(default_factory=lambda: ["diffusion-cam", "gradcam", "llava-cam"])
    chains: list[ChainOverride] = Field(default_factory=list)


class SweepSpec(BaseModel):
    """A grid over one chain's module parameters: every combination becomes a chain."""

    model_config = ConfigDict(extra="forbid")
    base: str = Field("diffusion-cam-reference", description="preset the grid starts from")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="'module.param' -> values")


class FaithfulnessSpec(BaseModel):
    """The faithfulness stage (``dcam faithfulness``; :class:`stages.faithfulness.stage.FaithfulnessConfig`):
    when the block is present, ``dcam run`` and ``dcam demo`` run it after explain and before the report."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] | None = Field(None, description="methods of the run to evaluate (default: all)")
    baseline: Literal["mean", "blur"] = "mean"
    points: int = Field(13, ge=3, description="points on each deletion / insertion curve")
    window: int | None = Field(None, ge=1, description="occlusion window in cells (default: 1 up to a 16x16 grid)")
    targets: Literal["objects", "words"] = "objects"
    randomisation_samples: int = Field(4, ge=0)
    batch_size: int = Field(16, ge=1, description="perturbed images per forward")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="only the first N samples")
    random_orders: int = Field(3, ge=1, description="random orders (and noise maps) averaged per word")
    device: str | None = Field(None, description="default: the capture's device")

    def stage_config(self):
        from stages.faithfulness.stage import FaithfulnessConfig

        return FaithfulnessConfig(baseline=self.baseline, points=self.points, window=self.window, targets=self.targets,
                                  randomisation_samples=self.randomisation_samples, batch_size=self.batch_size,
                                  seed=self.seed, limit=self.limit, random_orders=self.random_orders)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    root: str = Field("artifacts/run", min_length=1,
                      description="artifact root: a local directory or an fsspec URL such as s3://bucket/prefix")
    storage_options: dict[str, Any] | None = Field(
        None, description="fsspec/s3fs options of a URL root, e.g. {endpoint_url: http://127.0.0.1:9000}; "
                          "keep credentials in the environment (AWS_ACCESS_KEY_ID, ...), not here: any option "
                          "of CREDENTIAL_KEYS, or a URL with user:password@, is refused")
    cache_dir: str | None = Field(None, description="where the local mirror of a URL root lives "
                                                    "(default $DCAM_CACHE_DIR, else ~/.cache/dcam)")
    dataset: DatasetSpec
    capture: CaptureSpec = Field(default_factory=CaptureSpec)
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    sweep: SweepSpec | None = None
    faithfulness: FaithfulnessSpec | None = None
    score: bool = True
    tam_resize: Literal["uint8", "float"] = Field(
        "uint8", description="how TAM's protocol resizes a map before Otsu: uint8 (TAM's eval.py) or float")
    report: bool = True
    report_max_samples: int | None = Field(None, ge=1, description="report at most this many samples (all are scored)")
    report_methods: list[str] | None = Field(None, description="chains shown in the report (default: all)")
    shard_size: int = Field(50, ge=1)
    runner: Literal["thread", "dask", "sequential"] = "thread"
    dask_address: str | None = None

    @model_validator(mode="after")
    def _storage(self) -> "RunConfig":
        from schemas.storage import is_url

        if self.storage_options is not None and not is_url(self.root):
            raise ValueError(f"storage_options apply to a URL root (s3://bucket/prefix), not the local root {self.root!r}")
        found = credentials_in({"root": self.root, "dask_address": self.dask_address,
                                "storage_options": self.storage_options})
        if found:
            raise ValueError(f"{found[0]}: put credentials in the environment (AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE), not in the run config: "
                             "the config is recorded as flow parameters")
        return self


#: Option names that carry credentials in s3fs, botocore, gcsfs, adlfs and HTTP clients (compared in lower
#: case, at any depth of ``storage_options``): a run config holding one is refused, as it is recorded as
#: Prefect flow parameters. Profiles and endpoints (``profile``, ``endpoint_url``) are not credentials.
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "username", "user", "password", "passwd", "access_key", "secret_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "session_token", "security_token",
    "account_key", "sas_token", "connection_string", "client_secret", "credentials", "refresh_token",
    "api_key", "private_key", "passphrase", "authorization", "auth",
})


def credentials_in(value: Any, where: str = "") -> list[str]:
    """Where ``value`` (a config fragment) holds a credential: a key of :data:`CREDENTIAL_KEYS` with a value,
    or a URL with user information (``https://user:pass@host``). Returns dotted paths."""
    from urllib.parse import urlsplit

    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if str(k).lower() in CREDENTIAL_KEYS and v not in (None, "", {}, []):
                found.append(path)
            else:
                found += credentials_in(v, path)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += credentials_in(v, f"{where}[{i}]")
    elif isinstance(value, str) and "@" in value and "://" in value:
        try:
            has_user = urlsplit(value).username is not None
        except ValueError:
            has_user = False
        if has_user:
            found.append(f"{where} (user information in a URL)")
    return found


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration (one-line errors)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DcamError(f"config file {path} not found")
    try:
        text = path.read_text()
        check_yaml(text, str(path))  # nesting, aliases and expanded size, before anything is built
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise DcamError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    try:
        cfg = RunConfig.model_validate(raw)
    except Exception as e:
        errs = getattr(e, "errors", lambda: [])()
        if errs:
            first = errs[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            msg = str(first.get("msg")).removeprefix("Value error, ")
            raise DcamError(f"{path}: {where}: {msg}" if where else f"{path}: {msg}") from None
        raise DcamError(f"{path}: {e}") from None
    check_chains(cfg, str(path))
    return cfg


def check_chains(cfg: RunConfig, where: str) -> None:
    """Refuse unknown presets, base methods and modules now, not after the capture ran.

    Raises
    ------
    DcamError
        Naming the chain and the unknown name (and the known ones).
    """
    from flows.pipeline import resolve_chains
    from stages.basemaps import get_base_method
    from stages.refine.chain import get_module

    try:
        chains = resolve_chains(cfg)
    except DcamError as e:
        raise DcamError(f"{where}: explain: {e}") from None
    for chain in chains:
        try:
            get_base_method(chain.base)
            for module in chain.modules:
                get_module(module)
        except ValueError as e:
            raise DcamError(f"{where}: chain {chain.name!r}: {e}") from None
