"""``ROOT/run.json``: what one explain run produced, the file ``dcam report`` and ``dcam faithfulness`` read.

Written by :func:`stages.graph.finish_run` (every entry point: ``dcam explain``, ``dcam demo``, ``dcam run``
and the Prefect flows) through :func:`stages.catalog.write_run_record`, and validated on read. Schema 1.0
(2026-11-30): the first declared schema; earlier files had the same keys without ``schema_version`` and
``spec`` and are still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import DcamError

RUN_SCHEMA_VERSION = "1.0"


class StageEntry(BaseModel):
    """One node run: where its artifact is, whether it was computed now, and (sharded runs) its shard."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    path: str
    status: Literal["computed", "cached"]
    content_digest: str
    seconds: float = 0.0
    shard: int | None = None


class MethodEntry(BaseModel):
    """One chain (method) of a run: its node runs, final maps and scores, and the chain itself."""

    model_config = ConfigDict(extra="forbid")
    stages: list[StageEntry]
    maps: str
    scores: str | None = None
    chain: list[str] = Field(description="base method then modules, in order")
    profile: str = ""
    threshold: float | None = None
    spec: dict[str, Any] | None = Field(None, description="the chain (stages.chain.Chain) as data")


class RunRecord(BaseModel):
    """The whole ``run.json``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: str = RUN_SCHEMA_VERSION
    name: str | None = None
    root: str | None = Field(None, description="the URL root (only in the copy at a URL root)")
    store: str
    dataset: str | None = None
    policy: str
    layers: list[int] | None = None
    steps: list[int] | None = None
    tam_resize: str = "uint8"
    presets: dict[str, MethodEntry]
    faithfulness: str | None = None
    faithfulness_stages: list[StageEntry] | None = None
    report: dict[str, Any] | None = None

    @classmethod
    def read(cls, path: str | Path) -> "RunRecord":
        """Read and validate a ``run.json``; one-line :class:`DcamError` when it is not one."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DcamError(f"{path}: not a readable run description ({type(e).__name__}: {e})") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, where: str = "run.json") -> "RunRecord":
        """Validate a run description held in memory (a dict); one-line :class:`DcamError` when it is not one."""
        if isinstance(raw, dict):
            major = str(raw.get("schema_version", RUN_SCHEMA_VERSION)).split(".")[0]
            if major != RUN_SCHEMA_VERSION.split(".")[0]:
                raise DcamError(f"{where}: run.json schema {raw.get('schema_version')} is not readable by this "
                                f"version (expects {RUN_SCHEMA_VERSION})")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise DcamError(f"{where}: not a valid run description ({loc}: {first['msg']})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (what the stages pass around); the optional parts a run does not have yet
        (``faithfulness``, ``report``, ...) are left out rather than written as null."""
        data = self.model_dump(mode="json")
        for key in _ABSENT_WHEN_NONE:
            if data.get(key) is None:
                data.pop(key, None)
        return data


#: Top-level keys written only when the run has them (code tests ``"report" in run``).
_ABSENT_WHEN_NONE = ("root", "steps", "faithfulness", "faithfulness_stages", "report")
