"""Clip-shard dataset on a synthetic shard written here (pyarrow + PyAV), independent of the curation code."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from curate.media import decode_frames
from helpers import synthetic_frames, write_synthetic_dataset
from train.data import ClipBatches, ClipDataConfig, is_heldout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[str, list[str]]:
    root = tmp_path_factory.mktemp("clips")
    ids = write_synthetic_dataset(root, num_clips=7, frames=21, height=40, width=56, path_every=3,
                                  drop=("synthetic-0001",))
    return str(root), ids


def _cfg(root: str, **kw) -> ClipDataConfig:
    base = dict(root=root, resolutions=((32, 32),), num_frames=(5,), image_prob=0.0, batch_size=2, split="all")
    base.update(kw)
    return ClipDataConfig(**base)


def _take(ds, n: int) -> list[dict]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_batches_shapes_and_range(dataset) -> None:
    root, _ = dataset
    cfg = _cfg(root, resolutions=((32, 32), (24, 40)), num_frames=(5, 9), image_prob=0.3)
    shapes = set()
    for b in _take(ClipBatches(cfg), 10):
        v = b["video"]
        assert v.dtype == torch.float32 and v.shape[:2] == (2, 3) and len(b["clip_id"]) == 2
        assert v.shape[2] in (1, 5, 9) and tuple(v.shape[3:]) in ((32, 32), (24, 40))
        assert v.min() >= -1 and v.max() <= 1 and v.std() > 0.05
        shapes.add(tuple(v.shape[2:]))
    assert len(shapes) >= 3  # sizes and frame counts really vary


def test_images_only(dataset) -> None:
    root, _ = dataset
    for b in _take(ClipBatches(_cfg(root, image_prob=1.0)), 3):
        assert b["video"].shape == (2, 3, 1, 32, 32)


def test_selection_and_paths(dataset) -> None:
    root, ids = dataset
    ds = ClipBatches(_cfg(root, batch_size=1))
    seen = {cid for b in _take(ds, 20) for cid in b["clip_id"]}
    assert "synthetic-0001" not in seen  # keep = False in selection.parquet
    assert seen == set(ids) - {"synthetic-0001"}  # path-stored clips (2, 5) decode too
    everything = ClipBatches(_cfg(root, batch_size=1, use_selection=False))
    assert len(everything.clips) == 7


def test_decode_matches_source(dataset) -> None:
    root, _ = dataset
    data = open(f"{root}/media/synthetic-0002.mp4", "rb").read()
    got = decode_frames(data, start=3, count=4, stride=2)
    ref = synthetic_frames(2, 21, 40, 56)[[3, 5, 7, 9]]
    assert got.shape == ref.shape
    assert abs(got.astype(float) - ref).mean() < 6.0  # H.264 at crf 12
    wrong = synthetic_frames(2, 21, 40, 56)[[4, 6, 8, 10]]
    assert abs(got.astype(float) - ref).mean() < abs(got.astype(float) - wrong).mean()
    short = decode_frames(data, start=18, count=5, stride=1)  # past the end: last frame repeated
    assert short.shape[0] == 5 and (short[-1] == short[-2]).all()


def test_rank_sharding_is_disjoint_and_complete(dataset) -> None:
    root, ids = dataset
    cfg = _cfg(root, batch_size=1, use_selection=False)
    per_rank = [[b["clip_id"][0] for b in _take(ClipBatches(cfg, rank=r, world=2), 3)] for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 6  # 7 clips: ranks take 4 and 3 per epoch


def test_start_batch_replays_exactly(dataset) -> None:
    root, _ = dataset
    cfg = _cfg(root, num_frames=(5, 9), image_prob=0.3)
    fresh = _take(ClipBatches(cfg), 5)
    resumed = _take(ClipBatches(cfg, start_batch=3), 2)
    for a, b in zip(fresh[3:], resumed):
        assert a["clip_id"] == b["clip_id"] and torch.equal(a["video"], b["video"])


def test_start_batch_with_loader_workers(dataset) -> None:
    """DataLoader hands out batches round-robin over workers; resuming at batch 3 continues the sequence."""
    root, _ = dataset
    cfg = _cfg(root, batch_size=1)
    fresh = _take(DataLoader(ClipBatches(cfg), batch_size=None, num_workers=2), 6)
    resumed = _take(DataLoader(ClipBatches(cfg, start_batch=3), batch_size=None, num_workers=2), 3)
    assert [b["clip_id"] for b in fresh[3:]] == [b["clip_id"] for b in resumed]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(fresh[3:], resumed))


def test_heldout_split(dataset) -> None:
    root, _ = dataset
    train = ClipBatches(_cfg(root, split="train", holdout_pct=40.0))
    held = ClipBatches(_cfg(root, split="heldout", holdout_pct=40.0))
    a, b = {c.clip_id for c in train.clips}, {c.clip_id for c in held.clips}
    assert a and b and not a & b and len(a | b) == 6
    assert all(is_heldout(c, 40.0) for c in b)


def test_bad_frame_count_and_missing_root(dataset, tmp_path) -> None:
    root, _ = dataset
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ClipBatches(_cfg(root, num_frames=(8,)))
    with pytest.raises(FileNotFoundError):
        ClipBatches(_cfg(str(tmp_path)))
