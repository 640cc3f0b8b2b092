"""Curation on one GPU machine: the CPU path (16 processes) against the GPU path (NVDEC + torch), no Ray.

Both paths do, per video, the analysis half of ``tessera build``'s split and score stages:

1. decode every frame and make the shot detector's 32x18 YUV thumbnails (``decode+features``);
2. run :class:`curate.scenes.SceneSplitter` over them and plan clips with :func:`curate.clips.plan_clips`
   (``scenes``, CPU in both paths);
3. decode again up to the last sampled frame, keeping each clip's 8 (frame, next frame) pairs at 160 px
   (``sample``; the build decodes the stored clips, about the same frames);
4. score each clip: sharpness, exposure, motion, pHash (``score``).

CPU path: ``curate.frames.iter_thumbs`` (PyAV) where PyAV is installed, else OpenCV's ``VideoCapture`` (one
decoder thread each); numpy/OpenCV scores; one process per core. GPU path: PyNvVideoCodec (NVDEC) decoders in
``--gpu-workers`` processes (several decoders at once), thumbnails, RGB samples, sharpness and exposure in torch on
the GPU (:mod:`curate.gpu`); motion (Farneback) and the pHash on the CPU from the 160-px frames. Cutting and
encoding clips is not timed: it is the same CPU work in both paths (H100/H200 have no NVENC) and needs PyAV,
which the GPU image lacks.

Inputs: the files of ``--footage`` (made once with ``prepare`` from the real videos of ../shared/data, spliced
and scaled to 720p and 1080p), each listed again and again until a resolution holds ``--minutes`` of video; every
listing is one input (decoding a file twice costs what two files cost; the page cache serves both paths alike).

Reported per resolution and path: source-video seconds per wall second, each stage's share of worker time, the
GPU's busy share (SM and NVDEC, sampled with nvidia-smi every 200 ms), busy CPU cores (/proc/stat), source-hours
per GPU-hour and per CPU-core-hour (16 cores allotted, and cores actually busy). Streaming efficiency: NVDEC
decoding the same frames alone, against the whole GPU path. ``--runs`` interleaved runs; the headline is the
median with min-max. A path that cannot run (no GPU, no NVDEC) is reported as skipped, with why.

    # once, where PyAV and ../shared exist (writes about 26 MB):
    python benchmarks/bench_curate_gpu.py prepare --out .gpu/footage
    # on the GPU machine:
    python benchmarks/bench_curate_gpu.py run --footage .gpu/footage --minutes 30 --out OUT.json
    # a CPU-only smoke run (the GPU path's code on CPU tensors):
    python benchmarks/bench_curate_gpu.py run --footage F --minutes 0.2 --gpu-device cpu --cpu-workers 2 \\
        --gpu-workers 1 --runs 1 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate_gpu_footage import OUT_FPS, SIZES, footage_files, prepare, synth_footage, video_info  # noqa: E402


# ------------------------------------------------------------------------------------------------------------
# one video, either path (runs in a worker process)
# ------------------------------------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(kind: str, device: str) -> None:
    """Per worker: one thread for OpenCV and torch; on a GPU worker, CUDA and PyNvVideoCodec loaded up front."""
    if os.environ.get("TESSERA_BENCH_NO_PYAV"):
        sys.modules["av"] = None  # as on the GPU image: import av raises ImportError
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _STATE.update(kind=kind, device=device, error=None)
    if kind == "gpu":
        try:
            import torch

            torch.set_num_threads(1)
            if device != "cpu":
                from curate.gpu import cuda_status

                why = cuda_status()
                if why:
                    _STATE["error"] = why
                else:
                    torch.zeros(1, device=device)
        except Exception as exc:
            _STATE["error"] = f"{type(exc).__name__}: {exc}"


def _sample_plan(spans, pairs: int = 8) -> dict[int, list[int]]:
    """Source-frame index -> the clips (by position in ``spans``) that sample it: each clip's (frame, next) pairs,
    spread as the split stage spreads them."""
    from curate.split import _pair_starts

    plan: dict[int, list[int]] = {}
    for c, span in enumerate(spans):
        for s in _pair_starts(span.end - span.start, pairs):
            for o in (0, 1):
                if s + o < span.end - span.start:
                    plan.setdefault(span.start + s + o, []).append(c)
    return plan


def _cpu_thumbs(path: str, decoder: str):
    """(index, pts_s, thumb) from PyAV (the build's reader) or OpenCV (BGR -> area 32x18 -> YUV)."""
    import cv2
    import numpy as np

    from curate.scenes import THUMB

    if decoder == "pyav":
        from curate.frames import iter_thumbs

        yield from iter_thumbs(path)
        return
    cap = _open_cv(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or OUT_FPS
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        small = cv2.resize(bgr, THUMB, interpolation=cv2.INTER_AREA)
        yield i, i / fps, cv2.cvtColor(small, cv2.COLOR_BGR2YUV).astype(np.float32)
        i += 1
    cap.release()


def _open_cv(path: str):
    import cv2

    try:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if cap.isOpened():
            return cap
    except Exception:
        pass
    return cv2.VideoCapture(path)


def _cpu_samples(path: str, decoder: str, plan: dict[int, list[int]], size: tuple[int, int],
                 tent: bool = False) -> dict[int, object]:
    """Source-frame index -> RGB uint8 at ``size`` (W, H) for every planned index, decoding up to the last one.
    ``tent``: full-size RGB shrunk with the GPU path's swscale-like tent (to compare decoders, not resamplers)."""
    import cv2

    def shrink(rgb):
        import torch

        from curate.gpu import resize_planes

        out = resize_planes(torch.from_numpy(rgb)[None], size[1], size[0], "tent")[0]
        return out.round().clamp(0, 255).to(torch.uint8).numpy()

    last, got = max(plan), {}
    if decoder == "pyav":
        import av

        with av.open(path) as c:
            st = c.streams.video[0]
            st.thread_count = 1
            for i, frame in enumerate(c.decode(st)):
                if i in plan:
                    got[i] = shrink(frame.to_ndarray(format="rgb24")) if tent else \
                        frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
                if i >= last:
                    break
        return got
    cap = _open_cv(path)
    for i in range(last + 1):
        if not cap.grab():
            break
        if i in plan:
            ok, bgr = cap.retrieve()
            if ok:
                got[i] = shrink(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) if tent else \
                    cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    cap.release()
    return got


def _even_size(h: int, w: int, short: int = 160) -> tuple[int, int]:
    s = short / min(w, h)
    return max(2, round(w * s / 2) * 2), max(2, round(h * s / 2) * 2)  # (W, H)


def run_video(path: str, mode: str, decoder: str) -> dict:
    """One video through one path. ``mode``: ``cpu``, ``gpu`` or ``decode`` (NVDEC alone, both passes). Returns
    its frame count, source seconds, clips and seconds per stage, or ``error``."""
    t_start = time.perf_counter()
    out = {"frames": 0, "source_s": 0.0, "clips": 0, "decode+features": 0.0, "scenes": 0.0, "sample": 0.0,
           "score": 0.0, "error": None}
    try:
        if _STATE.get("error"):
            raise RuntimeError(_STATE["error"])
        if mode == "cpu":
            _run_cpu(path, decoder, out)
        elif mode == "gpu":
            _run_gpu(path, _STATE["device"], out)
        elif mode == "check":
            out.update(_check(path, decoder, _STATE["device"]))
        else:
            _run_decode_only(path, _STATE["device"], out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        out["trace"] = traceback.format_exc()[-1500:]
    out["total"] = time.perf_counter() - t_start
    return out


def _scene_pass(items, fps: float, out: dict, t_items: list[float]):
    """Push ``(index, pts, thumb)`` into a SceneSplitter, timing the producer (into ``t_items``) and the splitter;
    returns the planned clip spans and the pts array."""
    import numpy as np

    from curate.clips import ClipConfig, plan_clips
    from curate.scenes import SceneConfig, SceneSplitter

    splitter, pts, t_scn = SceneSplitter(SceneConfig(), fps), [], 0.0
    it = iter(items)
    while True:
        a = time.perf_counter()
        item = next(it, None)
        b = time.perf_counter()
        t_items[0] += b - a
        if item is None:
            break
        splitter.push_thumb(item[2], item[1])
        pts.append(item[1])
        t_scn += time.perf_counter() - b
    a = time.perf_counter()
    pts = np.asarray(pts, dtype=np.float64)
    spans = plan_clips(splitter.finish(), ClipConfig(), fps, pts)
    out["scenes"] += t_scn + time.perf_counter() - a
    out["frames"], out["source_s"], out["clips"] = len(pts), len(pts) / fps, len(spans)
    return spans, pts


def _run_cpu(path: str, decoder: str, out: dict) -> None:
    import numpy as np

    from curate.scores import score_clip

    fps, _ = video_info(Path(path))
    t = [0.0]
    spans, pts = _scene_pass(_cpu_thumbs(path, decoder), fps, out, t)
    out["decode+features"] += t[0]
    if not spans:
        return
    import cv2

    cap = cv2.VideoCapture(path)
    h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    cap.release()
    plan = _sample_plan(spans)
    a = time.perf_counter()
    got = _cpu_samples(path, decoder, plan, _even_size(h, w))
    out["sample"] += time.perf_counter() - a
    a = time.perf_counter()
    for c in range(len(spans)):
        idx = sorted(i for i, cs in plan.items() if c in cs and i in got)
        if idx:
            score_clip(np.stack([got[i] for i in idx]), pts[idx], fps)
    out["score"] += time.perf_counter() - a


def _run_gpu(path: str, device: str, out: dict) -> None:
    import torch

    from curate import gpu

    fps, _ = video_info(Path(path))
    t_dec = [0.0]
    feat = [0.0]

    def thumbs():
        for b in gpu.iter_yuv(path, device):
            a = time.perf_counter()
            th = gpu.thumbs_from_yuv(b.y, b.uv, b.full_range).cpu().numpy()  # .cpu() waits for the GPU
            feat[0] += time.perf_counter() - a
            for k in range(len(th)):
                yield b.start + k, float(b.pts_s[k]), th[k]

    spans, pts = _scene_pass(thumbs(), fps, out, t_dec)
    out["decode+features"] += t_dec[0]  # includes the feature time (measured inside the producer)
    if not spans:
        return
    plan = _sample_plan(spans)
    last = max(plan)
    a = time.perf_counter()
    got = {}
    for b in gpu.iter_yuv(path, device):
        sel = [i for i in range(b.start, b.start + len(b.pts_s)) if i in plan]
        if sel:
            h, w = b.y.shape[1:3]
            ow, oh = _even_size(h, w)
            local = torch.as_tensor([i - b.start for i in sel], device=b.y.device)
            rgb = gpu.rgb_from_yuv(b.y[local], b.uv[local], oh, ow, b.full_range, b.matrix)
            got.update({i: rgb[k] for k, i in enumerate(sel)})
        if b.start + len(b.pts_s) > last:
            break
    if device != "cpu":
        torch.cuda.synchronize()
    out["sample"] += time.perf_counter() - a
    a = time.perf_counter()
    for c in range(len(spans)):
        idx = sorted(i for i, cs in plan.items() if c in cs and i in got)
        if idx:
            gpu.score_clip_torch(torch.stack([got[i] for i in idx]), pts[idx], fps)
    out["score"] += time.perf_counter() - a


def _check(path: str, decoder: str, device: str) -> dict:
    """The two paths on one video, compared: thumbnails, scene boundaries, and each clip's scores from each
    decoder's frames (both shrunk with the same tent, so decoders are compared, not resamplers), plus torch on the
    device against numpy on the very same frames."""
    import numpy as np
    import torch

    from curate import gpu
    from curate.clips import ClipConfig, plan_clips
    from curate.scores import score_clip

    fps, _ = video_info(Path(path))
    cpu_items = list(_cpu_thumbs(path, decoder))
    gpu_items = []
    for b in gpu.iter_yuv(path, device):
        th = gpu.thumbs_from_yuv(b.y, b.uv, b.full_range).cpu().numpy()
        gpu_items += [(b.start + k, float(b.pts_s[k]), th[k]) for k in range(len(th))]
    n = min(len(cpu_items), len(gpu_items))
    diff = float(np.mean([np.abs(cpu_items[i][2] - gpu_items[i][2]).mean() for i in range(n)]))
    cpu_scenes, gpu_scenes = _scenes_of(cpu_items, fps), _scenes_of(gpu_items, fps)
    pts = np.asarray([p for _, p, _ in cpu_items])
    spans = plan_clips(cpu_scenes, ClipConfig(), fps, pts)
    rel: dict[str, list[float]] = {}
    if spans:
        plan = _sample_plan(spans)
        h, w = _hw(path)
        cv = _cpu_samples(path, decoder, plan, _even_size(h, w), tent=True)
        gv = {}
        for b in gpu.iter_yuv(path, device):
            sel = [i for i in range(b.start, b.start + len(b.pts_s)) if i in plan]
            if sel:
                ow, oh = _even_size(*b.y.shape[1:3])
                local = torch.as_tensor([i - b.start for i in sel], device=b.y.device)
                rgb = gpu.rgb_from_yuv(b.y[local], b.uv[local], oh, ow, b.full_range, b.matrix).cpu().numpy()
                gv.update({i: rgb[k] for k, i in enumerate(sel)})
        for c in range(len(spans)):
            idx = sorted(i for i, cs in plan.items() if c in cs and i in cv and i in gv)
            if not idx:
                continue
            g_frames = np.stack([gv[i] for i in idx])
            a = score_clip(np.stack([cv[i] for i in idx]), pts[idx], fps)  # CPU decoder, numpy scores
            g = gpu.score_clip_torch(torch.as_tensor(g_frames, device=device), pts[idx], fps)  # NVDEC, torch
            n = score_clip(g_frames, pts[idx], fps)  # NVDEC frames, numpy scores: torch on the GPU vs numpy
            for k in ("sharpness", "luma_mean", "motion_mean"):
                if a[k] and g[k] is not None:
                    rel.setdefault(k, []).append(abs(g[k] - a[k]) / abs(a[k]))
                if n[k] and g[k] is not None:
                    rel.setdefault(f"{k}:torch-vs-numpy", []).append(abs(g[k] - n[k]) / abs(n[k]))
    cs = [(x.start, x.end) for x in cpu_scenes]
    gs = [(x.start, x.end) for x in gpu_scenes]
    same = len(cs) == len(gs) and all(abs(x[0] - y[0]) <= 1 and abs(x[1] - y[1]) <= 1 for x, y in zip(cs, gs))
    return {"frames_cpu": len(cpu_items), "frames_gpu": len(gpu_items), "thumb_mean_abs_diff": round(diff, 3),
            "scenes_cpu": cs, "scenes_gpu": gs, "same_scenes_within_1_frame": same, "clips": len(spans),
            "score_rel_diff_median": {k: round(float(np.median(v)), 4) for k, v in rel.items()},
            "score_rel_diff_max": {k: round(float(np.max(v)), 4) for k, v in rel.items()}}


def _scenes_of(items, fps):
    from curate.scenes import SceneConfig, SceneSplitter

    s = SceneSplitter(SceneConfig(), fps)
    for _, p, th in items:
        s.push_thumb(th, p)
    return s.finish()


def _hw(path: str) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(path)
    hw = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    cap.release()
    return hw


def _run_decode_only(path: str, device: str, out: dict) -> None:
    """NVDEC alone: every frame twice (the two passes), nothing computed."""
    from curate import gpu

    fps, _ = video_info(Path(path))
    a = time.perf_counter()
    n = 0
    for _ in range(2):
        n = 0
        for b in gpu.iter_yuv(path, device):
            n += len(b.pts_s)
    out["decode+features"] = time.perf_counter() - a
    out["frames"], out["source_s"] = n, n / fps


# ------------------------------------------------------------------------------------------------------------
# measuring a whole path: wall time, CPU busy, GPU busy
# ------------------------------------------------------------------------------------------------------------


class GpuSampler:
    """nvidia-smi every 200 ms in the background: (time, SM %, NVDEC %) samples; empty where nvidia-smi is absent."""

    def __init__(self):
        self.samples: list[tuple[float, float, float | None]] = []
        self.note = None
        self._proc = None
        if shutil.which("nvidia-smi") is None:
            self.note = "nvidia-smi not found"
            return
        for fields in ("utilization.gpu,utilization.decoder", "utilization.gpu"):
            cmd = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-lms", "200"]
            try:
                probe = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=20)
            except Exception as exc:
                self.note = f"nvidia-smi failed: {exc}"
                return
            if probe.returncode == 0:
                self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                threading.Thread(target=self._read, daemon=True).start()
                return
        self.note = "nvidia-smi cannot query utilization"

    def _read(self):
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.strip().split(",")]
            try:
                sm = float(parts[0])
                dec = float(parts[1]) if len(parts) > 1 and parts[1] not in ("", "[N/A]") else None
            except ValueError:
                continue
            self.samples.append((time.time(), sm, dec))

    def window(self, t0: float, t1: float) -> dict:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return {"gpu_busy": None, "nvdec_busy": None, "samples": 0, "note": self.note}
        dec = [x[2] for x in s if x[2] is not None]
        return {"gpu_busy": round(statistics.fmean(x[1] for x in s) / 100, 3),
                "nvdec_busy": round(statistics.fmean(dec) / 100, 3) if dec else None, "samples": len(s),
                "note": self.note}

    def close(self):
        if self._proc is not None:
            self._proc.terminate()


def cpu_busy() -> float:
    """Busy CPU-seconds of the whole machine so far (/proc/stat; 0 elsewhere)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_path(pool, mode: str, decoder: str, inputs: list[str], sampler: GpuSampler, deadline: float) -> dict:
    """All inputs through one path at once (the pool's workers in parallel); totals and rates."""
    t0, c0 = time.time(), cpu_busy()
    futures = [pool.submit(run_video, p, mode, decoder) for p in inputs]
    results = []
    for f in futures:
        try:
            left = deadline - time.time()
            if left <= 0 and not f.done():
                f.cancel()  # not waited for: a running one finishes while the pool shuts down
                raise cf.TimeoutError
            results.append(f.result(timeout=max(0.1, left)))
        except cf.TimeoutError:
            results.append({"error": "over the benchmark's deadline", "frames": 0, "source_s": 0.0})
        except Exception as exc:  # a worker died
            results.append({"error": f"{type(exc).__name__}: {exc}", "frames": 0, "source_s": 0.0})
    t1, c1 = time.time(), cpu_busy()
    ok = [r for r in results if not r.get("error")]
    errors = sorted({r["error"] for r in results if r.get("error")})
    wall = t1 - t0
    src = sum(r["source_s"] for r in ok)
    stages = {k: round(sum(r.get(k, 0.0) for r in ok), 3) for k in ("decode+features", "scenes", "sample", "score")}
    return {"mode": mode, "inputs": len(inputs), "done": len(ok), "errors": errors[:5],
            "trace": next((r.get("trace") for r in results if r.get("trace")), None),
            "frames": sum(r["frames"] for r in ok), "clips": sum(r.get("clips", 0) for r in ok),
            "source_s": round(src, 2), "wall_s": round(wall, 3), "speed": round(src / wall, 3) if wall else None,
            "worker_stage_s": stages, "cpu_busy_cores": round((c1 - c0) / wall, 2) if wall else None,
            **sampler.window(t0, t1)}


# ------------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------------


def _rates(r: dict, cores: int) -> dict:
    """Source-hours per GPU-hour (one GPU held for the wall time) and per CPU-core-hour (allotted and busy)."""
    if not r.get("speed"):
        return {}
    busy = r.get("cpu_busy_cores") or None
    return {"src_h_per_gpu_h": round(r["speed"], 2), "src_h_per_core_h": round(r["speed"] / cores, 3),
            "src_h_per_busy_core_h": round(r["speed"] / busy, 3) if busy else None}


def run(args) -> int:
    cores = os.cpu_count() or 1
    folder = Path(args.footage)
    synthetic = False
    files = footage_files(folder) if folder.is_dir() else {}
    if len(files) < len(SIZES):
        print(f"[bench] no 720p + 1080p footage in {folder}: synthesising (NOT real footage)", flush=True)
        try:
            synth_footage(Path(args.synth_dir), seconds=20.0)
        except Exception as exc:
            print(f"[bench] cannot synthesise footage either: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        files, synthetic = footage_files(Path(args.synth_dir)), True
    from curate.gpu import cuda_status

    gpu_device = args.gpu_device
    gpu_why = cuda_status() if gpu_device != "cpu" else None
    try:
        import av  # noqa: F401

        cpu_decoder = "pyav" if args.cpu_decoder == "auto" else args.cpu_decoder
    except ImportError:
        cpu_decoder = "opencv" if args.cpu_decoder == "auto" else args.cpu_decoder
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
              "cpu_cores": cores, "cpu_workers": args.cpu_workers, "gpu_workers": args.gpu_workers,
              "gpu_device": gpu_device, "gpu_unavailable": gpu_why, "cpu_decoder": cpu_decoder,
              "synthetic_footage": synthetic, "minutes_per_resolution": args.minutes, "runs": [], "gpu": None,
              "command": " ".join(sys.argv)}
    try:
        import torch

        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    inputs = {}
    for name, path in files.items():
        fps, n = video_info(path)
        secs = n / fps if fps and n else 60.0
        copies = max(1, int(-(-args.minutes * 60 // secs)))
        inputs[name] = [str(path)] * copies
        report.setdefault("footage", {})[name] = {"file": path.name, "seconds": round(secs, 2), "copies": copies}
    print(f"[bench] {json.dumps({k: report[k] for k in ('gpu', 'gpu_unavailable', 'cpu_decoder', 'footage')})}",
          flush=True)
    if gpu_why:
        print(f"[bench] GPU path skipped: {gpu_why}", flush=True)

    t_begin = time.time()
    deadline = t_begin + args.deadline_s
    ctx = mp.get_context("spawn")
    sampler = GpuSampler()
    cpu_pool = cf.ProcessPoolExecutor(args.cpu_workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=("cpu", "cpu"))
    gpu_pool = None if gpu_why else cf.ProcessPoolExecutor(args.gpu_workers, mp_context=ctx,
                                                           initializer=_init_worker, initargs=("gpu", gpu_device))
    try:
        warm = [cpu_pool.submit(run_video, inputs["720p"][0], "cpu", cpu_decoder)]  # imports, page cache
        if gpu_pool is not None:
            warm.append(gpu_pool.submit(run_video, inputs["720p"][0], "gpu", cpu_decoder))
        for f in warm:
            r = f.result()
            if r.get("error"):
                print(f"[bench] warm-up error: {r['error']}\n{r.get('trace', '')}", flush=True)
        if gpu_pool is not None:  # the same video through both paths' decoders: do they agree?
            for name in SIZES:
                r = gpu_pool.submit(run_video, inputs[name][0], "check", cpu_decoder).result()
                report.setdefault("check", {})[name] = {k: v for k, v in r.items() if k not in
                                                        ("decode+features", "scenes", "sample", "score", "trace")}
                print(f"[bench] check {name}: {json.dumps(report['check'][name])}", flush=True)
                if r.get("trace"):
                    print(r["trace"], flush=True)
        for k in range(args.runs):
            t_run = time.time()
            run_rec = {}
            for name in SIZES:
                for path_name, pool, mode in (("cpu", cpu_pool, "cpu"), ("gpu", gpu_pool, "gpu")):
                    if pool is None:
                        continue
                    r = run_path(pool, mode, cpu_decoder, inputs[name], sampler, deadline)
                    r.update(_rates(r, cores))
                    run_rec[f"{name}/{path_name}"] = r
                    print(f"[bench] run {k + 1} {name} {path_name}: {r['source_s']:.0f} s of video in "
                          f"{r['wall_s']:.1f} s = {r['speed']}x, stages {r['worker_stage_s']}, "
                          f"gpu {r.get('gpu_busy')}, nvdec {r.get('nvdec_busy')}, cpu cores {r['cpu_busy_cores']}"
                          + (f", ERRORS {r['errors']}" if r["errors"] else ""), flush=True)
                    if r["errors"] and r.get("trace"):
                        print(r["trace"], flush=True)
                if k == 0 and gpu_pool is not None and gpu_device != "cpu":  # NVDEC alone: the slowest stage
                    r = run_path(gpu_pool, "decode", cpu_decoder, inputs[name], sampler, deadline)
                    run_rec[f"{name}/nvdec-alone"] = r
                    print(f"[bench] run 1 {name} nvdec alone: {r['wall_s']:.1f} s, nvdec {r.get('nvdec_busy')}",
                          flush=True)
            report["runs"].append(run_rec)
            spent = time.time() - t_run
            if k + 1 < args.runs and time.time() + spent * 1.1 > deadline:
                print(f"[bench] stopping after {k + 1} run(s): another would pass the {args.deadline_s:.0f} s "
                      "deadline", flush=True)
                break
    finally:
        cpu_pool.shutdown(cancel_futures=True)
        if gpu_pool is not None:
            gpu_pool.shutdown(cancel_futures=True)
        sampler.close()
    report["summary"] = summarise(report["runs"])
    report["wall_s"] = round(time.time() - t_begin, 1)
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"[bench] wrote {args.out}", flush=True)
    return 0


def summarise(runs: list[dict]) -> dict:
    """Per resolution: median (min-max) speed of each path over the runs, the GPU/CPU ratio per run and its
    median, and the streaming efficiency (NVDEC alone / whole GPU path, run 1)."""
    out = {}
    for name in SIZES:
        rec = {}
        for p in ("cpu", "gpu"):
            speeds = [r[f"{name}/{p}"]["speed"] for r in runs if r.get(f"{name}/{p}", {}).get("speed")]
            if speeds:
                rec[p] = {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds),
                          "n": len(speeds)}
        ratios = [r[f"{name}/gpu"]["speed"] / r[f"{name}/cpu"]["speed"] for r in runs
                  if r.get(f"{name}/gpu", {}).get("speed") and r.get(f"{name}/cpu", {}).get("speed")]
        if ratios:
            rec["gpu_over_cpu"] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                   "max": round(max(ratios), 3)}
        alone = runs[0].get(f"{name}/nvdec-alone") if runs else None
        gpu1 = runs[0].get(f"{name}/gpu") if runs else None
        if alone and gpu1 and alone.get("wall_s") and gpu1.get("wall_s") and not alone["errors"]:
            rec["streaming_efficiency"] = round(alone["wall_s"] / gpu1["wall_s"], 3)
        out[name] = rec
    return out


def print_table(report: dict) -> None:
    print(f"\nGPU: {report['gpu'] or 'none'} | CPU path decoder: {report['cpu_decoder']} | cores: "
          f"{report['cpu_cores']} | synthetic footage: {report['synthetic_footage']}")
    hdr = (f"{'res/path':<14}{'src s':>8}{'wall s':>8}{'x real':>8}{'dec+feat':>9}{'scenes':>8}{'sample':>8}"
           f"{'score':>8}{'GPU':>6}{'NVDEC':>6}{'cores':>6}{'h/GPU-h':>9}{'h/core-h':>9}")
    print(hdr)
    print("-" * len(hdr))
    for k, run_rec in enumerate(report["runs"]):
        for key, r in run_rec.items():
            st = r.get("worker_stage_s", {})
            tot = sum(st.values()) or 1.0

            def share(s):
                return f"{st.get(s, 0) / tot:.0%}"

            def num(v, fmt):
                return format(v, fmt) if isinstance(v, (int, float)) else "-"

            print(f"{key:<14}{num(r.get('source_s'), '.0f'):>8}{num(r.get('wall_s'), '.1f'):>8}"
                  f"{num(r.get('speed'), '.1f'):>8}{share('decode+features'):>9}{share('scenes'):>8}"
                  f"{share('sample'):>8}{share('score'):>8}{num(r.get('gpu_busy'), '.2f'):>6}"
                  f"{num(r.get('nvdec_busy'), '.2f'):>6}{num(r.get('cpu_busy_cores'), '.1f'):>6}"
                  f"{num(r.get('src_h_per_gpu_h'), '.1f'):>9}{num(r.get('src_h_per_core_h'), '.2f'):>9}"
                  + (f"  run {k + 1}" if len(report["runs"]) > 1 else ""))
    print("\nsummary (median, min-max over runs):")
    for name, rec in report["summary"].items():
        parts = []
        for p in ("cpu", "gpu"):
            if p in rec:
                parts.append(f"{p} {rec[p]['median']:.1f}x real time ({rec[p]['min']:.1f}-{rec[p]['max']:.1f}, "
                             f"n={rec[p]['n']})")
        if "gpu_over_cpu" in rec:
            g = rec["gpu_over_cpu"]
            parts.append(f"GPU/CPU {g['median']:.2f} ({g['min']:.2f}-{g['max']:.2f})")
        if "streaming_efficiency" in rec:
            parts.append(f"streaming efficiency {rec['streaming_efficiency']:.2f}")
        print(f"  {name}: " + "; ".join(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="splice real footage into 720p and 1080p files (needs PyAV, ../shared)")
    p.add_argument("--out", default=str(REPO / ".gpu" / "footage"))
    p.add_argument("--seconds-scale", type=float, default=0.5, help="share of every source (1.0: 60 s in all)")
    r = sub.add_parser("run", help="time the CPU path against the GPU path")
    r.add_argument("--footage", default=str(REPO / ".gpu" / "footage"))
    r.add_argument("--synth-dir", default="/tmp/tessera-bench-footage", help="where fallback footage is made")
    r.add_argument("--minutes", type=float, default=30.0, help="minutes of video per resolution")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1)
    r.add_argument("--gpu-workers", type=int, default=8, help="processes, each with its own NVDEC decoder")
    r.add_argument("--gpu-device", default="cuda", help="cuda, or cpu to run the GPU path's code on CPU tensors")
    r.add_argument("--cpu-decoder", choices=["auto", "pyav", "opencv"], default="auto")
    r.add_argument("--deadline-s", type=float, default=420.0, help="no new run starts that would end after this")
    r.add_argument("--no-pyav", action="store_true", help="behave as on a machine without PyAV (testing)")
    r.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(Path(a.out), a.seconds_scale)
        return 0
    if a.no_pyav:
        os.environ["TESSERA_BENCH_NO_PYAV"] = "1"  # the workers read it
        sys.modules["av"] = None  # import av raises ImportError from here on, in this process
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
