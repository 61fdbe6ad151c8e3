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


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    root: str = Field("artifacts/run", min_length=1,
                      description="artifact root: a local directory or an fsspec URL such as s3://bucket/prefix")
    storage_options: dict[str, Any] | None = Field(
        None, description="fsspec/s3fs options of a URL root, e.g. {endpoint_url: http://127.0.0.1:9000}; "
                          "keep credentials in the environment (AWS_ACCESS_KEY_ID, ...), not here")
    cache_dir: str | None = Field(None, description="where the local mirror of a URL root lives "
                                                    "(default $DCAM_CACHE_DIR, else ~/.cache/dcam)")
    dataset: DatasetSpec
    capture: CaptureSpec = Field(default_factory=CaptureSpec)
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    sweep: SweepSpec | None = None
    score: bool = True
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
        for key in ("key", "secret", "token"):
            if self.storage_options and self.storage_options.get(key):
                raise ValueError(f"storage_options.{key}: put credentials in the environment (AWS_ACCESS_KEY_ID, "
                                 "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE), not in the run config: "
                                 "the config is recorded as flow parameters")
        return self


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration (one-line errors)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DcamError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DcamError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    try:
        return RunConfig.model_validate(raw)
    except Exception as e:
        errs = getattr(e, "errors", lambda: [])()
        if errs:
            first = errs[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            msg = str(first.get("msg")).removeprefix("Value error, ")
            raise DcamError(f"{path}: {where}: {msg}" if where else f"{path}: {msg}") from None
        raise DcamError(f"{path}: {e}") from None
