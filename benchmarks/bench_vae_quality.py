"""Quality at equal budget: our VAE against the CogVideoX-architecture VAE, both trained from scratch on the
same clips with the same recipe; PSNR / SSIM on held-out clips.

    # 1. here (CPU, needs PyAV): real videos of ../shared/data -> a small JPEG-frame pack (< 25 MB)
    python benchmarks/bench_vae_quality.py prepare --src ../shared/data --out .benchdata/clips.npz
    # 2. on the GPU (needs diffusers; PIL or torchvision to decode the JPEG frames)
    python benchmarks/bench_vae_quality.py train --data .benchdata/clips.npz --budget_s 90 --out q.json
    # CPU smoke run of step 2 at tiny sizes
    python benchmarks/bench_vae_quality.py train --data .benchdata/clips.npz --device cpu --ours tiny \
        --cog_tiny --budget_s 5 --batch 1 --frames 5 --crop 32 --eval_clips 2

Data. Only the real videos (the synthetic fades / counter / delayed-start clips and the frame-dropped copy of
the GoldenEye clip are left out). Each video gives one (ASL) or three segments of ``--seg_frames`` consecutive frames,
resized (short side) and centre-cropped to ``--size`` square, stored as JPEG (quality 92) to stay small.
Held-out split by *source video* (no held-out video is ever trained on): every 5th ASL clip by name, plus
bottle-detection and the animation clip. Training batches: random ``--frames``-frame windows, random
``--crop`` square crops, random horizontal flips. Held-out clips: the first ``--frames`` frames of each
held-out segment, centre crop; the JPEG-decoded frames are the ground truth for both models.

Recipe (identical for both): AdamW (lr 2e-4, betas 0.9 / 0.99, linear warm-up 50 steps), grad clip 1.0,
bf16 autocast, loss ``L1 + 1e-6 * KL per input element`` on a posterior sample (our ``train/train_vae.py``
loss without LPIPS / GAN), same batches in the same order (one seeded sampler), cuDNN autotuning on.
CogVideoX is built from diffusers' default ``AutoencoderKLCogVideoX()`` config (4x8x8, 16 latent channels,
the same compression as our ``base``), random init, its own encode / decode paths.

Budget. CogVideoX trains for ``--budget_s`` seconds of GPU wall time (synchronised) and reaches N steps.
Ours is then evaluated at N steps (equal steps: ours has used less GPU time) and trained on until it has
used the same GPU seconds (equal GPU time: ours has done more steps). Both rows are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.metrics import psnr, ssim  # noqa: E402
from model.vae import PRESETS, VideoVAE, num_params  # noqa: E402

SYNTHETIC = {"fades.mp4", "counter.mp4", "delayed_start.mp4", "goldeneye-vfr-drop3.mp4"}
HELDOUT_EXTRA = {"bottle-detection.mp4", "issue-236-split-copy.mkv"}


# ---------------------------------------------------------------------------------------------------------
#   1. prepare (CPU): videos -> JPEG frame pack
# ---------------------------------------------------------------------------------------------------------


def _read_frames(path: Path, size: int, starts: list[float], n: int) -> list[list[np.ndarray]]:
    """Decode ``n`` consecutive frames at each relative start in ``starts`` (0..1), resized + centre-cropped."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out = []
    for s in starts:
        i0 = int(s * max(0, len(frames) - n))
        seg = frames[i0 : i0 + n]
        if len(seg) < n:
            continue
        t = torch.from_numpy(np.stack(seg)).permute(0, 3, 1, 2).float()  # (n, 3, H, W)
        h, w = t.shape[-2:]
        k = size / min(h, w)
        t = F.interpolate(t, size=(max(size, round(h * k)), max(size, round(w * k))), mode="area")
        y0, x0 = (t.shape[-2] - size) // 2, (t.shape[-1] - size) // 2
        t = t[..., y0 : y0 + size, x0 : x0 + size].round().clamp(0, 255).byte()
        out.append([f.permute(1, 2, 0).numpy() for f in t])
    return out


def prepare(src: Path, out: Path, size: int, seg_frames: int) -> dict:
    """Write ``out`` (npz, no pickles): JPEG bytes of every frame, per-segment offsets, names and split."""
    from PIL import Image

    videos = sorted(p for p in src.rglob("*") if p.suffix in (".mp4", ".mkv") and p.name not in SYNTHETIC)
    asl = sorted(p.name for p in videos if p.parent.name == "asl_gestures")
    held = set(asl[::5]) | HELDOUT_EXTRA
    blobs, seg_index, names, heldout = [], [], [], []
    for p in videos:
        starts = [0.5] if p.parent.name == "asl_gestures" else [0.2, 0.5, 0.8]
        for seg in _read_frames(p, size, starts, seg_frames):
            first = len(blobs)
            for f in seg:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format="JPEG", quality=92)
                blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
            seg_index.append((first, len(blobs)))
            names.append(p.name)
            heldout.append(p.name in held)
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, jpeg=np.concatenate(blobs), jpeg_len=lengths, segments=np.array(seg_index, dtype=np.int64),
             names=np.array(names), heldout=np.array(heldout), size=np.array(size))
    info = {"segments": len(names), "heldout_segments": int(sum(heldout)), "frames": len(blobs),
            "mbytes": out.stat().st_size / 1e6, "heldout_videos": sorted(held)}
    print(json.dumps(info))
    return info


def _decode_jpeg(b: np.ndarray) -> np.ndarray:
    try:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB"))
    except ImportError:  # the GPU image may lack PIL; torchvision decodes JPEG too
        from torchvision.io import decode_jpeg

        return decode_jpeg(torch.from_numpy(b.copy())).permute(1, 2, 0).numpy()


def load_pack(path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """-> (train segments, held-out segments, held-out names); each segment uint8 (3, T, S, S)."""
    d = np.load(path)
    ends = np.cumsum(d["jpeg_len"])
    starts = ends - d["jpeg_len"]
    frames = [_decode_jpeg(d["jpeg"][s:e]) for s, e in zip(starts, ends)]
    segs = [torch.from_numpy(np.stack(frames[a:b])).permute(3, 0, 1, 2).contiguous() for a, b in d["segments"]]
    train = [s for s, h in zip(segs, d["heldout"]) if not h]
    held = [s for s, h in zip(segs, d["heldout"]) if h]
    held_names = [str(n) for n, h in zip(d["names"], d["heldout"]) if h]
    return train, held, held_names


# ---------------------------------------------------------------------------------------------------------
#   2. train + evaluate (GPU)
# ---------------------------------------------------------------------------------------------------------


def batches(train: list[torch.Tensor], batch: int, frames: int, crop: int, seed: int):
    """Endless seeded batches, (B, 3, frames, crop, crop) float in [-1, 1]: the same sequence for every model."""
    g = torch.Generator().manual_seed(seed)
    while True:
        out = []
        for _ in range(batch):
            s = train[int(torch.randint(len(train), (1,), generator=g))]
            t0 = int(torch.randint(s.shape[1] - frames + 1, (1,), generator=g))
            y0, x0 = (int(torch.randint(s.shape[-1] - crop + 1, (1,), generator=g)) for _ in range(2))
            clip = s[:, t0 : t0 + frames, y0 : y0 + crop, x0 : x0 + crop]
            if bool(torch.rand(1, generator=g) < 0.5):
                clip = clip.flip(-1)
            out.append(clip)
        yield torch.stack(out).float() / 127.5 - 1.0


class Ours(torch.nn.Module):
    def __init__(self, preset: str) -> None:
        super().__init__()
        self.vae = VideoVAE(PRESETS[preset])

    def forward(self, x: torch.Tensor, gen: torch.Generator | None, sample: bool = True):
        post = self.vae.encode(x)
        z = post.sample(gen) if sample else post.mode()
        return self.vae.decode(z), post.mean, post.logvar  # (B, 3, T, H, W), moments (B, 16, T', h, w)


class Cog(torch.nn.Module):
    def __init__(self, tiny: bool) -> None:
        super().__init__()
        try:
            from curate.compat import ensure_torchvision  # CPU machines with a mismatched torchvision

            ensure_torchvision()
        except ImportError:
            pass
        from diffusers import AutoencoderKLCogVideoX

        kw = {"block_out_channels": (16, 16, 16, 16), "norm_num_groups": 8, "layers_per_block": 1} if tiny else {}
        self.vae = AutoencoderKLCogVideoX(**kw)

    def forward(self, x: torch.Tensor, gen: torch.Generator | None, sample: bool = True):
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen, device=x.device) if sample else post.mean
        return self.vae.decode(z.to(x.dtype)).sample, post.mean, post.logvar


def _kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mean, logvar = mean.float(), logvar.float().clamp(-30.0, 20.0)
    return (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).flatten(1).sum(1)  # (B,)


@torch.no_grad()
def evaluate(model: torch.nn.Module, held: list[torch.Tensor], frames: int, crop: int, device, bf16: bool) -> dict:
    model.eval()
    ps, ss = [], []
    for s in held:
        y0 = (s.shape[-1] - crop) // 2
        x = s[None, :, :frames, y0 : y0 + crop, y0 : y0 + crop].float().to(device) / 127.5 - 1.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            recon = model(x, None, sample=False)[0]
        recon = recon.float().clamp(-1, 1)
        ps.append(float(psnr(recon, x)[0]))
        ss.append(float(ssim(recon, x)[0]))
    model.train()
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_per_clip": ps}


def train_one(model, data, steps: int | None, budget_s: float | None, args, device, evals: dict | None = None):
    """Train until ``steps`` or ``budget_s`` GPU seconds; ``evals`` maps a step to a callback run there (its
    time is not counted). Returns (steps done, GPU seconds, loss history)."""
    bf16 = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step, used, losses = 0, 0.0, []
    while (steps is None or step < steps) and (budget_s is None or used < budget_s):
        x = next(data).to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for grp in opt.param_groups:
            grp["lr"] = args.lr * min(1.0, (step + 1) / 50)
        gen = torch.Generator(device=device).manual_seed(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            recon, mean, logvar = model(x, gen)
            loss = (recon.float() - x).abs().mean() + 1e-6 * _kl(mean, logvar).mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        used += time.perf_counter() - t0
        step += 1
        losses.append(float(loss.detach()))
        if evals and step in evals:
            evals[step](step, used)
        if step % 50 == 0:
            print(json.dumps({"step": step, "gpu_s": round(used, 1), "loss": round(float(np.mean(losses[-50:])), 4)}),
                  flush=True)
    return step, used, losses


def run_train(args) -> dict:
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    train, held, held_names = load_pack(Path(args.data))
    if args.eval_clips:
        held, held_names = held[: args.eval_clips], held_names[: args.eval_clips]
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "train_segments": len(train), "heldout_segments": len(held), "heldout_names": held_names,
           "batch": args.batch, "frames": args.frames, "crop": args.crop, "lr": args.lr}
    print(json.dumps(env), flush=True)
    rows = []

    # CogVideoX: fixed GPU-time budget -> N steps
    torch.manual_seed(args.seed)
    cog = Cog(args.cog_tiny).to(device)
    n_cog, t_cog, l_cog = train_one(cog, batches(train, args.batch, args.frames, args.crop, args.seed),
                                    args.max_steps, args.budget_s, args, device)
    r = evaluate(cog, held, args.frames, args.crop, device, device.type == "cuda")
    rows.append({"model": "cogvideox", "params_m": num_params(cog) / 1e6, "steps": n_cog, "gpu_s": t_cog,
                 "final_loss": float(np.mean(l_cog[-20:])), **r})
    print(json.dumps(rows[-1]), flush=True)
    del cog
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ours: evaluated at N steps, then trained on to the same GPU seconds
    torch.manual_seed(args.seed)
    ours = Ours(args.ours).to(device)

    def at_equal_steps(step: int, used: float) -> None:
        r = evaluate(ours, held, args.frames, args.crop, device, device.type == "cuda")
        rows.append({"model": f"ours-{args.ours}", "budget": "equal steps", "params_m": num_params(ours) / 1e6,
                     "steps": step, "gpu_s": used, **r})
        print(json.dumps(rows[-1]), flush=True)

    n_ours, t_ours, l_ours = train_one(ours, batches(train, args.batch, args.frames, args.crop, args.seed), None,
                                       t_cog, args, device, evals={n_cog: at_equal_steps})
    r = evaluate(ours, held, args.frames, args.crop, device, device.type == "cuda")
    rows.append({"model": f"ours-{args.ours}", "budget": "equal GPU time", "params_m": num_params(ours) / 1e6,
                 "steps": n_ours, "gpu_s": t_ours, "final_loss": float(np.mean(l_ours[-20:])), **r})
    rows[0]["budget"] = "reference"

    print("\n| model | budget | params (M) | steps | GPU s | held-out PSNR (dB) | SSIM | PSNR delta vs CogVideoX |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['budget']} | {r['params_m']:.1f} | {r['steps']} | {r['gpu_s']:.1f} | "
              f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr'] - rows[0]['psnr']:+.2f} |")
    result = {"env": env, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--src", default="../shared/data")
    p.add_argument("--out", default=".benchdata/clips.npz")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--seg_frames", type=int, default=41)
    t = sub.add_parser("train")
    t.add_argument("--data", default=".benchdata/clips.npz")
    t.add_argument("--device", default="cuda")
    t.add_argument("--ours", default="base")
    t.add_argument("--cog_tiny", action="store_true", help="a tiny CogVideoX config (CPU smoke runs only)")
    t.add_argument("--budget_s", type=float, default=90.0, help="GPU seconds of CogVideoX training")
    t.add_argument("--max_steps", type=int, default=None)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--frames", type=int, default=17)
    t.add_argument("--crop", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval_clips", type=int, default=0, help="0: all held-out segments")
    t.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(Path(args.src), Path(args.out), args.size, args.seg_frames)
    return run_train(args)


if __name__ == "__main__":
    main()
