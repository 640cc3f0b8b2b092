"""Training script on CPU at tiny size: the loss falls, resume is exact, artefacts are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_synthetic_dataset
from model.checkpoint import list_checkpoints
from train.train_vae import TrainVAEConfig, edge_l1, main, parse_args

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("vae_data")
    write_synthetic_dataset(root, num_clips=3, frames=13, height=32, width=40)
    return str(root)


def _cfg(data_root: str, run_dir: Path, **kw) -> TrainVAEConfig:
    base = dict(data_root=data_root, run_dir=str(run_dir), preset="tiny", resolutions=((32, 32),),
                num_frames=(5,), image_prob=0.25, batch_size=2, num_workers=0, holdout_pct=0.0, lr=3e-3,
                warmup_steps=2, device="cpu", log_every=2, preview_every=3, ckpt_every=3, keep_last=2)
    base.update(kw)
    return TrainVAEConfig(**base)


def test_loss_falls_on_tiny_overfit(tmp_path, data_root) -> None:
    out = main(_cfg(data_root, tmp_path / "run", steps=40, image_prob=0.0, ckpt_every=100, preview_every=100))
    losses = out["losses"]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_edge_loss_sees_moved_edges_not_brightness() -> None:
    """edge_l1 is zero for a constant offset, which plain L1 punishes, and positive for a silhouette moved by one
    pixel or blurred. Moving a 6x6 square (value 2 above its background) one pixel right changes the horizontal
    gradient at 4 of 15 columns in its 6 rows (by 2 each) and the vertical one at 2 of 16 columns in 2 of 15 rows."""
    x = -torch.ones(1, 3, 2, 16, 16)
    x[..., 4:10, 4:10] = 1.0
    assert edge_l1(x + 0.3, x) == 0
    moved = torch.roll(x, 1, dims=-1)
    by_hand = 0.5 * (2.0 * 4 * 6 / (16 * 15) + 2.0 * 2 * 2 / (15 * 16))
    assert torch.isclose(edge_l1(moved, x), torch.tensor(by_hand))
    blurred = torch.nn.functional.avg_pool3d(x, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
    assert edge_l1(blurred, x) > 0.05


def test_edge_weight_adds_the_edge_term(tmp_path, data_root) -> None:
    """The logged total is L1 + KL term + edge_weight * edge: with edge_weight 1 the first step's loss is larger
    by the edge term than with 0 (same weights, data and draws)."""
    plain = main(_cfg(data_root, tmp_path / "a", steps=1, ckpt_every=100, preview_every=100))
    edged = main(_cfg(data_root, tmp_path / "b", steps=1, ckpt_every=100, preview_every=100, edge_weight=1.0))
    gap = edged["losses"][0] - plain["losses"][0]
    assert 0.005 < gap < 1.0, gap


def test_resume_is_exact(tmp_path, data_root) -> None:
    """Stop after 3 steps and resume to 6: same losses step for step and same final weights as 6 straight
    steps, with the discriminator (on from step 2) and EMA in play."""
    extra = dict(disc_weight=0.1, disc_start=2, disc_channels=8, ema_decay=0.9)
    straight = main(_cfg(data_root, tmp_path / "a", steps=6, **extra))
    first = main(_cfg(data_root, tmp_path / "b", steps=3, **extra))
    second = main(_cfg(data_root, tmp_path / "b", steps=6, **extra))
    assert len(first["losses"]) == 3 and len(second["losses"]) == 3
    assert first["losses"] + second["losses"] == straight["losses"]
    cb = list_checkpoints(tmp_path / "b" / "checkpoints")
    ca = list_checkpoints(tmp_path / "a" / "checkpoints")[-1]
    assert ca.name == cb[-1].name == "step-000000006"
    for name in ("vae", "ema", "disc"):
        a, b = load_file(str(ca / f"{name}.safetensors")), load_file(str(cb[-1] / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # without resume the second run would start over and differ
    fresh = main(_cfg(data_root, tmp_path / "c", steps=3, **extra))
    assert fresh["losses"] == first["losses"]


def test_run_artefacts(tmp_path, data_root, capsys) -> None:
    run = tmp_path / "run"
    out = main(_cfg(data_root, run, steps=6, time_budget_s=600))
    assert json.loads((run / "config.json").read_text())["preset"] == "tiny"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-000000003", "step-000000006"]
    meta = json.loads((run / "checkpoints" / "step-000000006" / "meta.json").read_text())
    assert meta["extra"]["config"]["steps"] == 6 and meta["extra"]["data_start_batch"] == 6
    previews = sorted((run / "previews").glob("*.png"))
    assert [p.name for p in previews] == ["step-000000003.png", "step-000000006.png"]
    from PIL import Image

    w, h = Image.open(previews[0]).size
    assert w == 64 and h in (32, 128)  # input | recon side by side; 1 row (image batch) or 4 frames
    # TensorBoard holds what was trained: the loss of every log step (log_every 2), as the run returned it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"loss/total", "loss/l1", "loss/kl", "train/lr", "train/psnr"} <= set(events.Tags()["scalars"])
    total = events.Scalars("loss/total")
    assert [e.step for e in total] == [2, 4, 6]
    assert [e.value for e in total] == pytest.approx([out["losses"][1], out["losses"][3], out["losses"][5]], rel=1e-5)
    l1 = {e.step: e.value for e in events.Scalars("loss/l1")}
    assert all(0 < l1[e.step] <= e.value + 1e-6 for e in total)  # l1 is one non-negative term of the total
    # the header names both limits, and the last step prints a progress line with the loss
    printed = capsys.readouterr().out
    assert "training for 6 steps or 600 s, whichever comes first" in printed
    assert f"[vae] step 6/6  loss {out['losses'][5]:.4f}" in printed


def test_cli_parses_every_field() -> None:
    cfg = parse_args(["--preset", "small", "--resolutions", "[[256, 256], [480, 848]]", "--num_frames", "[17, 33]",
                      "--bf16", "false", "--steps", "5"])
    assert cfg.preset == "small" and cfg.resolutions == ((256, 256), (480, 848)) and cfg.num_frames == (17, 33)
    assert cfg.bf16 is False and cfg.steps == 5


def test_vae_eval_on_a_trained_checkpoint(tmp_path, data_root) -> None:
    from pipelines.vae_eval import cli

    run = tmp_path / "run"
    main(_cfg(data_root, run, steps=3, ckpt_every=3, preview_every=100))
    out = tmp_path / "eval"
    res = cli(["--data-root", data_root, "--checkpoint", str(run / "checkpoints"), "--weights", "vae",
               "--split", "all", "--num-frames", "9", "--height", "32", "--width", "40", "--chunk-frames", "4",
               "--chunk-latents", "1", "--tile", "32", "--tile-overlap", "16", "--out-dir", str(out),
               "--device", "cpu"])
    rows, summary = res["rows"], res["summary"]
    assert len(rows) == 3 and summary["clips"] == 3 and summary["weights"].endswith("step-000000003:vae")
    assert summary["max_latent_abs_diff"] <= 1e-5 and summary["max_pixel_abs_diff"] <= 1e-5
    assert all(5 < r["whole_psnr"] < 60 and -1 < r["whole_ssim"] <= 1 for r in rows)
    assert all(abs(r["whole_psnr"] - r["chunked_psnr"]) < 1e-3 for r in rows)
    assert "tiled_psnr" in rows[0] and (out / "per_clip.csv").is_file()
    assert json.loads((out / "summary.json").read_text())["clips"] == 3


def _ddp_worker(rank: int, world: int, port: int, data_root: str, run_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out = main(_cfg(data_root, Path(run_dir), steps=2, ckpt_every=2, preview_every=100, image_prob=0.0))
    torch.save(out["losses"], f"{run_dir}/losses-{rank}.pt")


def test_ddp_two_cpu_ranks(tmp_path, data_root) -> None:
    """torchrun-style run with 2 gloo ranks: both ranks see different data, and the checkpoint is written once."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    run.mkdir()
    mp.spawn(_ddp_worker, args=(2, port, data_root, str(run)), nprocs=2, join=True)
    l0 = torch.load(run / "losses-0.pt", weights_only=True)
    l1 = torch.load(run / "losses-1.pt", weights_only=True)
    assert len(l0) == len(l1) == 2 and l0 != l1  # different shards -> different per-rank losses
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-000000002"]
    meta = json.loads((run / "checkpoints" / "step-000000002" / "meta.json").read_text())
    assert meta["extra"]["world"] == 2


def test_time_budget_stops_early_and_still_checkpoints(tmp_path, data_root) -> None:
    """A budget already spent after the first step ends the run there, with the checkpoint and preview a last
    step writes (the loop's VAE and the GPU run rely on this)."""
    out = main(_cfg(data_root, tmp_path / "run", steps=1000, time_budget_s=1e-9, ckpt_every=500, preview_every=500))
    assert out["step"] == 1 and len(out["losses"]) == 1
    assert [c.name for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-000000001"]
    assert (tmp_path / "run" / "previews" / "step-000000001.png").is_file()
