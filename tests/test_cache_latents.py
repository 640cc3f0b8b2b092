"""``tessera cache-latents`` on a local Ray: rows keyed by clip_id, resume skips done shards, latents equal a
direct VAE encode, captions become the text encoder's tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate.media import encode_mp4
from helpers import RayInitStopped
from curate.store import write_manifest
from helpers import synthetic_frames
from model.buckets import BucketConfig, make_buckets
from model.checkpoint import load_vae, save_checkpoint
from model.text import TextConfig, TextEncoder
from model.vae import build_vae
from pipelines.cache_latents import CacheLatentsConfig, main
from train.latents import LatentReader, bucket_for, clip_pixels, scan_latents

pytestmark = pytest.mark.timeout(300)

BUCKETS = BucketConfig(areas=(32 * 48,), aspect_ratios=(1.0, 1.5), frames=(1, 5, 9), token_budget=4096)
CAPTIONS = ["a red square drifts over a green field", "waves roll onto a beach at dusk", None, None, "a cat", None]


def write_captioned_dataset(root: Path) -> list[str]:
    """Two shards of three clips: mixed sizes and lengths, some captions null, one clip kept out."""
    (root / "clips").mkdir(parents=True)
    sizes = [(32, 48, 9), (32, 32, 5), (48, 48, 9), (32, 48, 3), (40, 40, 1), (32, 48, 9)]
    rows = []
    for i, (h, w, t) in enumerate(sizes):
        rows.append({"clip_id": f"c{i:02d}", "clip_mp4": encode_mp4(synthetic_frames(i, t, h, w)), "clip_path": None,
                     "width": w, "height": h, "num_frames": t, "fps": 24.0, "duration_s": t / 24,
                     "caption_short": CAPTIONS[i], "caption_dense": (CAPTIONS[i] + ", in detail") if i == 0 else None,
                     "caption_expanded": None})
    schema = pa.schema([("clip_id", pa.string()), ("clip_mp4", pa.binary()), ("clip_path", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("num_frames", pa.int32()),
                        ("fps", pa.float64()), ("duration_s", pa.float64()), ("caption_short", pa.string()),
                        ("caption_dense", pa.string()), ("caption_expanded", pa.string())])
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows[3 * k: 3 * k + 3], schema=schema),
                       root / "clips" / f"part-{k:05d}.parquet")
    write_manifest(root, (root / "clips").glob("*.parquet"))  # readers open a dataset through its manifest
    ids = [r["clip_id"] for r in rows]
    pq.write_table(pa.table({"clip_id": ids, "keep": [cid != "c05" for cid in ids]}), root / "selection.parquet")
    return ids


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400 * 1024 * 1024,
             log_to_driver=False)  # a private cluster, never one another process started
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cached(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("cache")
    write_captioned_dataset(root / "data")
    torch.manual_seed(0)
    vae = build_vae("tiny")
    with torch.no_grad():  # perturb the zero-initialised residual convs so the encoder is not trivially linear
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(root / "vae", 7, {"vae": vae, "ema": vae}, extra={"config": {"preset": "tiny"}})
    cfg = CacheLatentsConfig(input=str(root / "data"), vae=str(root / "vae"), output=str(root / "latents"),
                             buckets=BUCKETS, batch_size=2, actor_cpus=0.5)
    summary = main(cfg)
    return root, cfg, summary


def test_rows_are_keyed_by_clip_id_and_follow_selection(cached):
    root, _, summary = cached
    out = root / "latents"
    files = sorted((out / "latents").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    ids = [cid for f in files for cid in pq.read_table(f, columns=["clip_id"]).column("clip_id").to_pylist()]
    assert sorted(ids) == ["c00", "c01", "c02", "c03", "c04"]  # c05 is not kept; c03 (3 frames) becomes an image
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["latent_channels"] == 16 and manifest["text_dim"] == 384
    assert sum(s["rows"] for s in manifest["shards"]) == len(ids) == summary["counts"]["clips"]
    reader = LatentReader()
    values = torch.cat([reader.load(r)[0].double().flatten() for r in scan_latents(out)])
    assert manifest["latent_mean"] == pytest.approx(float(values.mean()), rel=1e-6, abs=1e-9)
    assert manifest["latent_std"] == pytest.approx(float(values.std(unbiased=False)), rel=1e-6)


def test_latents_equal_a_direct_encode(cached):
    root, cfg, _ = cached
    vae = load_vae(cfg.vae)
    buckets = make_buckets(BUCKETS)
    table = pq.read_table(root / "data" / "clips" / "part-00000.parquet").to_pylist()
    reader = LatentReader()
    recs = {r.clip_id: r for r in scan_latents(root / "latents")}
    for row in table:
        b = bucket_for(buckets, row["num_frames"], row["height"], row["width"])
        with torch.no_grad():
            want = vae.encode(clip_pixels(row["clip_mp4"], b)[None]).mode()[0]
        got, _ = reader.load(recs[row["clip_id"]])
        assert got.shape == want.shape == (16, 1 + (b.frames - 1) // 4, b.height // 8, b.width // 8)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)  # float16 storage


def test_text_embeddings_match_the_encoder_and_nulls_stay_null(cached):
    root, _, _ = cached
    recs = {r.clip_id: r for r in scan_latents(root / "latents")}
    assert recs["c00"].captions == ("short", "dense") and recs["c02"].captions == ()
    _, text = LatentReader().load(recs["c00"])
    want = TextEncoder(TextConfig())([CAPTIONS[0]])
    torch.testing.assert_close(text["short"], want.tokens[0][want.mask[0]], atol=2e-3, rtol=2e-3)
    assert text["dense"].shape[0] > text["short"].shape[0]


def test_rerun_skips_done_shards_and_redoes_a_missing_one(cached):
    root, cfg, _ = cached
    out = root / "latents"
    kept = out / "latents" / "part-00000.parquet"
    mtime = kept.stat().st_mtime_ns
    (out / "_state" / "done" / "part-00001.json").unlink()  # as if killed before shard 1 finished
    (out / "latents" / "part-00001.parquet").unlink()
    summary = main(cfg)
    assert summary["counts"]["shards_done_before"] == 1 and summary["counts"]["shards_encoded"] == 1
    assert kept.stat().st_mtime_ns == mtime  # shard 0 untouched
    assert (out / "latents" / "part-00001.parquet").is_file()
    assert len(scan_latents(out)) == 5


def test_a_changed_config_is_refused(cached):
    import dataclasses

    _, cfg, _ = cached
    with pytest.raises(ValueError, match="another config"):
        main(dataclasses.replace(cfg, buckets=dataclasses.replace(BUCKETS, frames=(1, 5))))


@pytest.mark.parametrize("env, address, want", [(None, None, {"address": "local", "num_cpus": 1}),
                                                ("10.1.2.3:6379", None, {"address": "10.1.2.3:6379"}),
                                                ("10.1.2.3:6379", "auto", {"address": "auto"})])
def test_ray_is_private_unless_ray_address_names_a_cluster(tmp_path, monkeypatch, init_calls, env, address, want):
    """Without ``$RAY_ADDRESS`` a private Ray, never the cluster a ``ray start`` (live or crashed) left named in
    /tmp/ray; with it, that cluster, joined without local sizes (Ray refuses ``num_cpus`` there); ``--address``
    wins over both."""
    calls = init_calls
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    write_captioned_dataset(tmp_path / "data")
    with pytest.raises(RayInitStopped):
        main(CacheLatentsConfig(input=str(tmp_path / "data"), vae=str(tmp_path / "vae"), output=str(tmp_path / "o"),
                                num_cpus=1, address=address))
    assert len(calls) == 1 and {k: calls[0].get(k) for k in ("address", "num_cpus")} == {"num_cpus": None} | want
