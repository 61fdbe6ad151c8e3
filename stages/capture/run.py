"""The capture stage over a dataset: one Zarr store, one group per sample, resumable.

A sample that cannot be captured (unreadable image, empty caption, missing mask,
out of memory, ...) is recorded as failed with its reason and the run goes on.
Restarting a killed run skips the samples already complete and redoes the rest.
"""

from __future__ import annotations

import gc
import hashlib
import io
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from schemas.capture import KIND, SCHEMA_VERSION, CaptureStore, written_by_dcam
from schemas.errors import DcamError
from schemas.limits import check_pixels, limits
from schemas.lock import exclusive, store_lock_path
from schemas.manifest import InputRef, SampleStatus, StageManifest, digest_files, digest_json, read_manifest
from stages.capture import STAGE_VERSION  # the capture node's version, owned by stages.capture
from stages.capture.core import CaptureConfig, capture_sample


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DcamError(f"image file missing: {path}") from None
    except OSError as e:
        raise DcamError(f"unreadable image {path}: {e}") from None


def decode_image(data: bytes, path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL warns above 89M pixels; the limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                check_pixels(im.height, im.width, f"image {path}")  # before decoding
                return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DcamError(f"unreadable image {path}: {e}") from None


def input_digest(image: bytes, prompt: str | None, *, model: str, config: dict) -> str:
    """What a sample's capture is computed from: the image's bytes, the prompt, the model (its weights'
    digest) and the capture config. A resumed capture redoes a sample whose input digest changed."""
    return digest_json({"image": hashlib.sha256(image).hexdigest(), "prompt": prompt, "model": model,
                        "config": config})


def model_digest(spec: str) -> str:
    """Digest of a model's weights and config: their bytes up to 100 MB, beyond that sizes and times."""
    from stages.capture.registry import checkpoint_path

    path = checkpoint_path(spec)
    p = Path(path) if path is not None else None
    if p is None or not p.exists():
        return digest_json(spec)
    files = sorted(f for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    if p.is_dir() and sum(f.stat().st_size for f in files) < 100 * 2**20:
        return digest_files(p, exclude=())
    return digest_json([(str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size, int(f.stat().st_mtime))
                        for f in files])


def _reusable(store: CaptureStore, sample_id: str, inputs: str, *, retry_failed: bool) -> bool:
    """True when the store holds ``sample_id`` whole, captured from the same inputs (and ok, or failed and
    not to be retried). A damaged or incomplete sample is not: it is captured again."""
    # the inputs first: a sample of other inputs (or of a store from before input digests) is redone unread
    if not store.is_complete(sample_id) or store._samples()[sample_id].attrs.get("input_digest") != inputs:
        return False
    try:
        sample = store.sample(sample_id)
    except DcamError:
        return False
    return sample.ok or not retry_failed


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def capture_dataset(
    data: str | Path,
    out: str | Path,
    *,
    adapter,
    model_spec: str,
    config: CaptureConfig,
    limit: int | None = None,
    overwrite: bool = False,
    sample_ids: list[str] | None = None,
    on_sample: Callable[[str, str], None] | None = None,
    finalize_store: bool = True,
    retry_failed: bool = True,
    lock_wait: float = 0.0,
    allow_outside_paths: bool | None = None,
) -> StageManifest | None:
    """Capture every sample of the dataset at ``data`` into the store at ``out``.

    Parameters
    ----------
    data : path
        A dataset directory (any format ``stages.ingest.loaders`` reads).
    out : path
        The capture store; created, or resumed when it holds a capture of the same config.
    adapter : ModelAdapter
    model_spec : str
        ``FAMILY[:PATH]``, recorded in the store's config.
    config : CaptureConfig
    limit : int, optional
        Capture only the first ``limit`` samples.
    sample_ids : list of str, optional
        Capture only these samples (a shard).
    finalize_store : bool
        Write the manifest when done (shards leave that to :func:`finalize` once all are done).
    retry_failed : bool
        Capture again the samples an earlier run recorded as failed (a transient out-of-memory, say).
    on_sample : callable(sample_id, status), optional
        Called after each sample (progress bars).
    lock_wait : float
        Seconds to wait while another process writes the store (``math.inf``: until it ends); 0 refuses
        at once (:func:`schemas.lock.exclusive`).
    allow_outside_paths : bool, optional
        As :func:`stages.ingest.loaders.load_dataset`.

    Raises
    ------
    LockedError
        If another process (on this host or, on a shared filesystem, another) writes the store.
    """
    from stages.dmllm.sampler import validate_schedule
    from stages.ingest.loaders import load_dataset

    if config.steps > limits().steps:
        raise DcamError(f"steps: {config.steps} is more than the limit of {limits().steps} (DCAM_MAX_STEPS)")
    try:  # a configuration error fails the run at once, not every sample
        validate_schedule(gen_length=adapter.gen_length, steps=config.steps, block_length=config.block_length,
                          temperature=config.temperature, remasking=config.remasking)
    except ValueError as e:
        raise DcamError(f"sampler settings: {e} (generation length {adapter.gen_length})") from None
    t0 = time.perf_counter()
    out = Path(out)
    samples, rejected = load_dataset(data, limit=limit, allow_outside_paths=allow_outside_paths)
    if sample_ids is not None:
        wanted = set(sample_ids)
        samples = [s for s in samples if s.sample_id in wanted]
        rejected = [(sid, r) for sid, r in rejected if sid in wanted]
    store_config = {"model": model_spec, "family": adapter.family, "data": str(Path(data).resolve()), **config.to_dict()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(store_lock_path(out), what=f"capture store {out}", wait=lock_wait):
        return _capture_locked(out, samples, rejected, adapter=adapter, model_spec=model_spec, config=config,
                               store_config=store_config, overwrite=overwrite, on_sample=on_sample,
                               retry_failed=retry_failed, finalize_data=data if finalize_store else None, t0=t0)


def _capture_locked(out: Path, samples, rejected, *, adapter, model_spec: str, config: CaptureConfig,
                    store_config: dict, overwrite: bool, on_sample, retry_failed: bool, finalize_data, t0: float,
                    ) -> StageManifest | None:
    """:func:`capture_dataset` once it holds the store's lock (``finalize_data`` None: leave it unfinished)."""
    if overwrite and out.exists():
        if not written_by_dcam(out):
            raise DcamError(f"--overwrite: {out} is not a capture store diffusion-cam wrote; refusing to delete it")
        shutil.rmtree(out)
    store = CaptureStore.create(out, config=store_config, resume=True)
    for sid in store.incomplete_ids():  # left by a killed run, or damaged
        store._discard(sid)
    model = model_digest(model_spec)
    inputs_config = {k: v for k, v in store_config.items() if k != "data"}

    for sid, reason in rejected:  # rejected by the loader: the same input fails the same way
        rejection = digest_json({"rejected": reason})
        status = "skipped" if _reusable(store, sid, rejection, retry_failed=False) else "failed"
        if status == "failed":
            store.write_failed(sid, reason, {"input_digest": rejection})
        if on_sample:
            on_sample(sid, status)

    # The model and everything loaded so far stay alive: freezing them keeps the collector from scanning them
    # again (a gc.collect() per sample scanned ~400k objects, 0.3 to 0.4 s each).
    gc.freeze()
    for s in samples:
        status, reason, inputs = "ok", None, None
        prompt = getattr(s, "prompt", None)
        try:
            raw = _read_bytes(s.image_path)
            inputs = input_digest(raw, prompt, model=model, config=inputs_config)
            if _reusable(store, s.sample_id, inputs, retry_failed=retry_failed):
                if on_sample:
                    on_sample(s.sample_id, "skipped")
                continue
            image = decode_image(raw, s.image_path)
            cap = capture_sample(adapter, image, config, sample_id=s.sample_id, prompt=prompt)
            cap.attrs.update({"image_path": s.image_path, "source": getattr(s, "source", ""),
                              "reference_captions": list(s.captions), "input_digest": inputs})
            store.write_sample(s.sample_id, arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
        except (DcamError, ValueError) as e:
            status, reason = "failed", str(e)
        except (RuntimeError, MemoryError) as e:
            status = "failed"
            reason = (f"out of memory: {str(e).splitlines()[0]}" if _is_oom(e)
                      else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        except Exception as e:  # one bad sample never stops the run; the reason names the error
            status, reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if status == "failed":
            _free_device_memory()  # after the except block: the traceback no longer holds the graph
            store.write_failed(s.sample_id, reason, {"image_path": s.image_path, "input_digest": inputs})
        if on_sample:
            on_sample(s.sample_id, status)
    gc.unfreeze()

    if finalize_data is None:
        return None
    return finalize(store, data=finalize_data, seconds=time.perf_counter() - t0)


def _free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def finalize(store: CaptureStore, *, data: str | Path, seconds: float) -> StageManifest:
    """Write the store's manifest from its complete samples."""
    statuses = []
    gen = att = 0.0
    for sid in store.sample_ids():
        attrs = store._samples()[sid].attrs
        t = attrs.get("timings", {}) or {}
        gen += t.get("generate", 0.0)
        att += t.get("attribute", 0.0)
        statuses.append(SampleStatus(sample_id=sid, status=attrs.get("status", "ok"), reason=attrs.get("reason"),
                                     seconds=t.get("total"), digest=attrs.get("digest")))
    inputs = {}
    try:
        dm = read_manifest(data)
        inputs["dataset"] = InputRef(path=str(Path(data).resolve()), kind=dm.kind, content_digest=dm.content_digest)
    except DcamError:
        pass
    manifest = StageManifest(
        kind=KIND,
        schema_version=SCHEMA_VERSION,
        stage="capture",
        stage_version=STAGE_VERSION,
        config=store.config,
        inputs=inputs,
        content_digest=store.content_digest(),
        samples=statuses,
        timings={"wall": seconds, "generate": gen, "attribute": att},
    )
    store.finalize(manifest)
    return manifest
