"""``aptune extract``: the features a trained run computes for each video, as safetensors.

``features`` (N, D) is the head's input (the output of ``fc_norm``, or of V-JEPA 2's
attentive pooler) averaged over the run's test views (with ``--segment_merge tokens``: over
its crops, each crop's segments pooled together), so ``head(features)`` is the mean of the
views' logits; ``probs`` (N, C) is the mean softmax the same way, i.e. exactly what
``aptune predict`` reports (the two agree exactly with one view, and in their top-1 in
practice otherwise). ``--tokens`` adds ``tokens`` (N, t, h, w, D): the encoder's output
token grid (``model.forward_tokens``), averaged over the views.

Long lists are processed in chunks written to ``OUT.parts/`` as they finish; a rerun with
the same list resumes after the last finished chunk. Each part carries in its metadata a
sha256 of its tensors, its ``failed`` list and the extraction's fingerprint; a rerun
re-hashes every finished part and computes a part that does not match (bytes changed on
disk, or written by an earlier aptune without the hash) again, named in one log line. An
unreadable video is named, counted and listed in the metadata's ``failed``; it is never
silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from aptune.config import RunConfig
from aptune.data import VideoClipDataset, VideoDecodeError
from aptune.data.errors import DataError
from aptune.data.lists import VideoEntry
from aptune.engine.metrics import mean_over_views, view_probs
from aptune.engine.precision import Precision, inference_precision
from aptune.engine.segment_merge import token_merge
from aptune.engine.trained import TrainedRun

log = logging.getLogger("aptune")


class VideoViews(Dataset):
    """Item ``i``: ``(i, views (V, 3, T, S, S), None)`` or ``(i, None, reason)`` if unreadable."""

    def __init__(self, ds: VideoClipDataset) -> None:
        self.ds, self.views = ds, ds.views_per_video

    def __len__(self) -> int:
        return len(self.ds.entries)

    def __getitem__(self, i: int):
        try:
            clips = [self.ds[i * self.views + v].clips[0] for v in range(self.views)]
        except VideoDecodeError as exc:
            return i, None, str(exc)
        return i, torch.stack(clips), None


def read_list(path: str) -> list[str]:
    """One video per line; a trailing class label (``path label``, aptune's lists) is ignored."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"--list {path}: file not found")
    videos = []
    for line in src.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.rpartition(" ")
        labelled = head and tail.lstrip("-").isdigit() and not Path(line).exists()
        videos.append(head.strip() if labelled else line)
    if not videos:
        raise DataError(f"--list {path}: no videos listed")
    return videos


def model_from_config(cfg: RunConfig, device: torch.device) -> TrainedRun:
    """A model that is not an aptune run (``--model NAME --finetune CKPT``), as a run."""
    from aptune.engine.builders import build_run_model
    from aptune.engine.distributed import DistInfo

    net = build_run_model(cfg, DistInfo(device=device)).eval()
    names = [str(i) for i in range(cfg.data.nb_classes)]
    return TrainedRun(cfg, net, names, "finetune", device)


class Extractor:
    """Features (and probabilities, tokens) of batches of videos' test views, merged as
    the run's evaluation merges them (``--segment_merge``)."""

    def __init__(self, trained: TrainedRun, tokens: bool, precision: Precision) -> None:
        self.trained, self.want_tokens, self.precision = trained, tokens, precision
        self.merge = token_merge(trained.config)

    def __call__(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """views (B, V, 3, T, S, S) -> features (B, D), probs (B, C)[, tokens (B, t, h, w, D)].

        Features and probabilities are per view, or with merged segments per crop (its
        segments' tokens joined), then averaged over the video."""
        model = self.trained.model
        b, v = views.shape[:2]
        clips = views.flatten(0, 1).to(self.trained.device)
        with torch.no_grad(), self.precision.autocast():
            tokens = model.forward_tokens(clips)  # (B*V, N, D): data tokens only
            joined = tokens if self.merge is None else self.merge.join(tokens)
            feats = model.pool_tokens(joined)
            logits = model.forward_head(feats)  # (B*rows, C)
        rows = feats.shape[0] // b
        out = {
            "features": feats.float().view(b, rows, -1).mean(dim=1).cpu(),
            "probs": mean_over_views(view_probs(logits), rows).cpu(),
        }
        if self.want_tokens:
            grid = model.patch_embed.grid_of(clips)  # (t, h, w)
            out["tokens"] = tokens.float().view(b, v, *grid, tokens.shape[-1]).mean(dim=1).cpu()
        return out


def _fingerprint(videos: list[str], tokens: bool, source: str, chunk: int) -> str:
    """What must match for parts to be reused (the chunk size fixes which videos a part holds)."""
    text = json.dumps({"videos": videos, "tokens": tokens, "source": source, "chunk": chunk})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomic(tensors: dict, meta: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _part_hash(tensors: dict[str, torch.Tensor], failed: str, stamp: str) -> str:
    """sha256 of what a part holds: names, dtypes, shapes and bytes of its tensors, its
    ``failed`` list and the fingerprint of the extraction it belongs to."""
    h = hashlib.sha256(json.dumps([stamp, failed]).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_part(tensors: dict, failed: list[tuple[str, str]], stamp: str, part: Path) -> None:
    """A finished chunk with its hash in its own metadata: part and hash land together."""
    failed_json = json.dumps([[p, r] for p, r in failed])
    meta = {"failed": failed_json, "sha256": _part_hash(tensors, failed_json, stamp)}
    _write_atomic(tensors, meta, part)


def _part_fault(part: Path, stamp: str) -> str | None:
    """Why a finished part cannot be reused (None: its bytes are what was written)."""
    try:
        with safe_open(str(part), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as exc:
        return f"unreadable ({exc})"
    stored = meta.get("sha256")
    if stored is None:
        return "no sha256 (written by an earlier aptune)"
    actual = _part_hash(tensors, meta.get("failed", ""), stamp)
    return None if actual == stored else f"sha256 differs: {actual[:12]}, stored {stored[:12]}"


def _read_manifest(manifest: Path) -> dict:
    """The parts folder's manifest; an unreadable one is a one-line error, never a guess."""
    try:
        data = json.loads(manifest.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest}: unreadable ({exc}); delete its folder to start over") from exc


def _run_chunk(
    extract: Extractor, ds: VideoClipDataset, batch_videos: int, workers: int, progress
) -> tuple[dict, list[tuple[str, str]]]:
    """All videos of `ds`: (tensors with an ``index`` row per kept video, failed videos)."""
    loader = DataLoader(
        VideoViews(ds), batch_size=batch_videos, num_workers=workers, collate_fn=list
    )
    parts: dict[str, list[torch.Tensor]] = {}
    failed: list[tuple[str, str]] = []
    for items in loader:
        good = [(i, views) for i, views, _ in items if views is not None]
        for i, _, reason in items:
            if reason is not None:
                failed.append((ds.entries[i].path, reason))
                log.warning("unreadable video %s: %s", ds.entries[i].path, reason)
        if good:
            out = extract(torch.stack([views for _, views in good]))
            out["index"] = torch.tensor([i for i, _ in good], dtype=torch.int64)
            for k, t in out.items():
                parts.setdefault(k, []).append(t)
        progress.update(len(items))
    return {k: torch.cat(v) for k, v in parts.items()}, failed


def extract_features(
    trained: TrainedRun,
    videos: list[str],
    out: Path,
    tokens: bool = False,
    batch_size: int | None = None,
    chunk: int = 256,
    num_workers: int = 0,
    bf16: bool = False,
    progress: bool = True,
    source: str = "",
) -> tuple[int, list[tuple[str, str]]]:
    """Write ``out``; -> (videos written, [(path, reason) of unreadable videos])."""
    if chunk < 1:
        raise DataError(f"--chunk must be >= 1, got {chunk}")
    missing = [v for v in videos if not Path(v).exists()]
    if missing:
        raise DataError(
            f"{missing[0]}: no such video file or frame folder "
            f"({len(missing)} of {len(videos)} listed are missing)"
        )
    parts_dir = out.with_name(out.name + ".parts")
    stamp = _fingerprint(videos, tokens, source, chunk)
    manifest = parts_dir / "manifest.json"
    if manifest.is_file() and _read_manifest(manifest).get("fingerprint") != stamp:
        raise DataError(
            f"{parts_dir}: left by an extraction of another list, run or --chunk; delete it to "
            "start over"
        )
    parts_dir.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": stamp, "videos": len(videos)}))
    tmp.replace(manifest)
    precision = inference_precision(trained.device, bf16)  # training's rule for the card
    extract = Extractor(trained, tokens, precision)
    views = trained.views_per_video
    batch_videos = max(1, (batch_size or trained.config.optim.batch_size_val) // views)
    bar = tqdm(total=len(videos), desc="extract", unit="video", disable=None if progress else True)
    try:
        for n, lo in enumerate(range(0, len(videos), chunk)):
            part = parts_dir / f"part-{n:06d}.safetensors"
            if part.is_file():
                fault = _part_fault(part, stamp)
                if fault is None:
                    bar.update(min(chunk, len(videos) - lo))
                    continue
                log.warning("extract part %s is corrupt (%s): computing it again", part, fault)
                part.unlink()
            entries = [
                VideoEntry(str(Path(v).resolve()), 0, lo + i + 1)
                for i, v in enumerate(videos[lo : lo + chunk])
            ]
            ds = VideoClipDataset("test", trained.data, entries, trained.class_names, "extract")
            tensors, failed = _run_chunk(extract, ds, batch_videos, num_workers, bar)
            if "index" in tensors:
                tensors["index"] += lo
            _write_part(tensors, failed, stamp, part)
    finally:
        bar.close()
    return _merge_parts(parts_dir, videos, out, trained, tokens)


def _merge_parts(
    parts_dir: Path, videos: list[str], out: Path, trained: TrainedRun, tokens: bool
) -> tuple[int, list[tuple[str, str]]]:
    merged: dict[str, list[torch.Tensor]] = {}
    failed: list[tuple[str, str]] = []
    for part in sorted(parts_dir.glob("part-*.safetensors")):
        with safe_open(str(part), framework="pt") as f:
            failed += [tuple(x) for x in json.loads(f.metadata().get("failed", "[]"))]
            for k in f.keys():
                merged.setdefault(k, []).append(f.get_tensor(k))
    tensors = {k: torch.cat(v) for k, v in merged.items()}
    index = tensors.pop("index", torch.zeros(0, dtype=torch.int64))
    if not len(index):
        shutil.rmtree(parts_dir)
        raise DataError(f"no video could be read ({len(failed)} unreadable); nothing written")
    c = trained.config
    meta = {
        "paths": json.dumps([videos[int(i)] for i in index]),
        "failed": json.dumps(failed),
        "class_names": json.dumps(trained.class_names),
        "features": "the head's input (pooled tokens), mean over the test views",
        "probs": "mean softmax over the test views (aptune predict's probabilities)",
        "segment_merge": "tokens" if c.merges_tokens() else "softmax",
        "views": f"{c.data.test_num_segment} segments x {c.data.test_num_crop} crops",
        "model": str(c.model.model),
        "transfer_type": str(c.model.transfer_type),
        "which": trained.which,
    }
    if tokens:
        meta["tokens"] = "encoder's output tokens (N, t, h, w, D), mean over the test views"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(tensors, meta, out)
    shutil.rmtree(parts_dir)
    return len(index), failed
