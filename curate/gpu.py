"""Decode and score on a GPU: NVDEC decoding (PyNvVideoCodec) and the split stage's frame features in torch.

One interface, chosen by ``device``:

- :func:`iter_thumbs` yields ``(index, pts_s, thumb)`` like :func:`curate.frames.iter_thumbs` (the 32x18 YUV
  thumbnails :class:`curate.scenes.SceneSplitter` reads). ``device="cpu"`` IS that function (PyAV, planes area-
  averaged with OpenCV); ``device="cuda"`` decodes with NVDEC and averages the NV12 planes on the GPU.
- :func:`sample_clip_frames` returns a stored clip's ``(frame, next frame)`` sample pairs at analysis size, like
  :func:`curate.split.sample_clip_frames` (PyAV on CPU; NVDEC and a torch resize on the GPU).
- :class:`TorchScorer` adds the same columns as :class:`curate.scores.BasicScorer`, with sharpness and exposure
  computed in torch on the scorer's device.

Every torch function here runs unchanged on CPU tensors; that is how the tests hold it to the numpy/OpenCV path
(``tests/test_gpu_curate.py`` states the tolerances). What stays on the CPU, and why:

- **motion**: OpenCV's Farneback optical flow has no torch counterpart here; :func:`score_clip_torch` resizes
  and converts on the device, then hands the small uint8 frames (K x 160 x W) to :func:`curate.scores.score_motion`
  so the motion numbers are the CPU path's own. The pHash is the CPU function on the same small frames.
- **the scene decisions**: :class:`curate.scenes.SceneSplitter` consumes the thumbnails one by one (a few scalars
  per frame); only the per-frame features (the thumbnail itself) come from the GPU.
- **clip cutting**: H100/H200 have NVDEC but no NVENC, so clips are stream-copied or re-encoded by
  :func:`curate.clips.cut_clips` on CPU as before.

Colour: NV12 planes are taken as BT.601 video range (16-235) unless PyAV reports a full-range (``yuvj``) stream,
matching what :func:`curate.frames.iter_thumbs` and PyAV's RGB conversion (swscale's BT.601 default) do.
No Ray here; torch and PyNvVideoCodec are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from curate.scenes import THUMB
from curate.scores import BasicScorer, ScoreConfig, score_motion

# ------------------------------------------------------------------------------------------------------------
# which device
# ------------------------------------------------------------------------------------------------------------


def cuda_status() -> str | None:
    """None when NVDEC decoding and torch CUDA both work in this process, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as exc:  # ImportError, or its RuntimeError when the driver lacks the video libraries
        return f"PyNvVideoCodec cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return None


def resolve_device(device: str) -> tuple[str, str | None]:
    """``(device actually used, note)``: ``cuda`` when asked and :func:`cuda_status` allows, else ``cpu`` with a
    one-line note saying why (None when ``cpu`` was asked)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if device == "cpu":
        return "cpu", None
    why = cuda_status()
    if why is None:
        return "cuda", None
    return "cpu", f"--device cuda: {why}; decoding and scoring on CPUs instead (same results)"


# ------------------------------------------------------------------------------------------------------------
# torch frame features (any device)
# ------------------------------------------------------------------------------------------------------------


def area_matrix(n_in: int, n_out: int, device=None):
    """``(n_out, n_in)`` float32 weights of an area-mean resize along one axis: row ``i`` averages input cells
    ``[i * s, (i + 1) * s)`` with ``s = n_in / n_out``, fractional cells weighted by their overlap (OpenCV's
    ``INTER_AREA`` for a shrink). ``W @ x`` resizes the rows of ``x``."""
    import torch

    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64) * s  # (n_out,) start of each output cell, in input cells
    hi = lo + s
    edges = torch.arange(n_in + 1, dtype=torch.float64)  # input cell k spans [k, k + 1)
    overlap = (torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1]))
    w = overlap.clamp(min=0) / s  # (n_out, n_in), rows sum to 1
    return w.to(device=device, dtype=torch.float32)


def tent_matrix(n_in: int, n_out: int, device=None):
    """``(n_out, n_in)`` float32 weights of swscale's bilinear shrink along one axis: a triangle centred on each
    output pixel, as wide as two output steps, rows normalised. PyAV's ``to_ndarray(width=, height=)`` resizes
    this way; on a 720p frame shrunk to 284x160 the Laplacian sharpness of the result is within 0.5 % of PyAV's,
    where an area mean gives +70 % (a box keeps more of the fine detail than a triangle twice as wide)."""
    import torch

    s = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * s
    x = torch.arange(n_in, dtype=torch.float64) + 0.5
    w = (1.0 - (x[None, :] - centre[:, None]).abs() / max(s, 1.0)).clamp(min=0)
    return (w / w.sum(dim=1, keepdim=True)).to(device=device, dtype=torch.float32)


def resize_planes(x, out_h: int, out_w: int, kernel: str = "area"):
    """Resize ``(B, H, W)`` or ``(B, H, W, C)`` planes to ``(out_h, out_w)``, float32 out. Shrinking: ``area`` mean
    (OpenCV's ``INTER_AREA``) or ``tent`` (swscale's bilinear, :func:`tent_matrix`); growing: bilinear
    (``INTER_LINEAR``, half-pixel centres)."""
    import torch
    import torch.nn.functional as F

    chan = x.ndim == 4
    xc = x if chan else x[..., None]  # (B, H, W, C)
    h, w = xc.shape[1:3]
    if (h, w) == (out_h, out_w):
        return xc.float() if chan else xc[..., 0].float()
    xf = xc.permute(0, 3, 1, 2).contiguous().float()  # (B, C, H, W): planes contiguous for the matmuls
    if out_h <= h and out_w <= w:
        weights = area_matrix if kernel == "area" else tent_matrix
        wy, wx = weights(h, out_h, xf.device), weights(w, out_w, xf.device)
        out = wy @ (xf @ wx.T)  # (B, C, out_h, out_w): the long axis first, so the second product is small
    else:
        out = F.interpolate(xf, size=(out_h, out_w), mode="bilinear", align_corners=False)
    out = out.permute(0, 2, 3, 1)  # (B, out_h, out_w, C)
    return out if chan else out[..., 0]


def _ranges(full_range: bool) -> tuple[float, float, float]:
    """(luma offset, luma range, chroma range) of 8-bit YUV: video range 16-235 / 16-240, or full 0-255."""
    return (0.0, 255.0, 255.0) if full_range else (16.0, 219.0, 224.0)


def thumbs_from_yuv(y, uv, full_range: bool = False, rotation: int = 0, size: tuple[int, int] = THUMB):
    """Shot-detector thumbnails from 4:2:0 frames: ``y`` ``(B, H, W)`` and ``uv`` ``(B, H/2, W/2, 2)`` uint8 (NV12's
    planes) -> ``(B, size[1], size[0], 3)`` float32 full-range YUV in display orientation, the values
    :func:`curate.frames.iter_thumbs` gives (area mean of each plane, then the range expanded)."""
    import torch

    coded = (size[1], size[0]) if rotation in (90, 270) else size  # (W, H) in the coded orientation
    ty = resize_planes(y, coded[1], coded[0])  # (B, h, w)
    tuv = resize_planes(uv, coded[1], coded[0])  # (B, h, w, 2)
    off, yr, cr = _ranges(full_range)
    thumb = torch.stack([(ty - off) * (255.0 / yr), (tuv[..., 0] - 128.0) * (255.0 / cr) + 128.0,
                         (tuv[..., 1] - 128.0) * (255.0 / cr) + 128.0], dim=-1)  # (B, h, w, 3)
    if rotation:
        thumb = torch.rot90(thumb, k=-(rotation // 90), dims=(1, 2))
    return thumb.contiguous()


# Y'CbCr -> R'G'B' matrices: (R from V, G from U, G from V, B from U)
_MATRICES = {"bt601": (1.402, 0.344136, 0.714136, 1.772), "bt709": (1.5748, 0.187324, 0.468124, 1.8556)}


def rgb_from_yuv(y, uv, out_h: int, out_w: int, full_range: bool = False, matrix: str = "bt601"):
    """BT.601 RGB uint8 ``(B, out_h, out_w, 3)`` from 4:2:0 planes, each plane resized straight to the output size
    with swscale's bilinear (:func:`tent_matrix`), then converted with the stream's matrix (PyAV applies a
    BT.709 tag; untagged is BT.601): the frames :func:`curate.split.sample_clip_frames` gets from PyAV."""
    import torch

    ys = resize_planes(y, out_h, out_w, "tent")
    uvs = resize_planes(uv, out_h, out_w, "tent")
    off, yr, cr = _ranges(full_range)
    yy = (ys - off) * (255.0 / yr)
    u, v = (uvs[..., 0] - 128.0) * (255.0 / cr), (uvs[..., 1] - 128.0) * (255.0 / cr)
    rv, gu, gv, bu = _MATRICES[matrix]
    rgb = torch.stack([yy + rv * v, yy - gu * u - gv * v, yy + bu * u], dim=-1)
    # truncated, as swscale's table conversion behind PyAV's rgb24 does: mean |difference| to it 1.4 levels at
    # full size, against 1.9 when rounded (a 320x180 H.264 frame)
    return rgb.floor_().clamp_(0, 255).to(torch.uint8)


def analysis_hw(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side ``short_side`` (as :func:`curate.scores.to_analysis_size`)."""
    scale = short_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def to_analysis_size_t(frames, short_side: int):
    """Torch :func:`curate.scores.to_analysis_size`: ``(K, H, W, 3)`` uint8 -> short side ``short_side``, uint8."""
    import torch

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (K>=1, H, W, 3), got {tuple(frames.shape)}")
    h, w = frames.shape[1:3]
    if min(h, w) == short_side:
        return frames
    oh, ow = analysis_hw(h, w, short_side)
    return resize_planes(frames, oh, ow).round_().clamp_(0, 255).to(torch.uint8)


def luma_t(frames):
    """OpenCV's ``COLOR_RGB2GRAY`` on ``(K, H, W, 3)`` uint8 -> float32 ``(K, H, W)``: OpenCV 5's 15-bit fixed-point
    BT.601 weights, so equal to it exactly (OpenCV 4's 14-bit weights differ by one level on ~0.2 % of pixels)."""
    import torch

    x = frames.to(torch.int32)
    y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15
    return y.float()


def sharpness_t(y) -> float:
    """Mean over frames of the variance of the 3x3 Laplacian of luma ``(K, H, W)`` (OpenCV ``Laplacian(ksize=1)``,
    reflect-101 borders)."""
    import torch
    import torch.nn.functional as F

    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=y.device).view(1, 1, 3, 3)
    lap = F.conv2d(F.pad(y[:, None], (1, 1, 1, 1), mode="reflect"), k)[:, 0]  # (K, H, W)
    return float(lap.double().var(dim=(1, 2), unbiased=False).mean())


def score_clip_torch(frames, pts: np.ndarray, fps: float, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """:func:`curate.scores.score_clip` for a ``(K, H, W, 3)`` uint8 tensor on any device: resize, luma, sharpness
    and exposure in torch; motion (Farneback) and the pHash on the CPU from the small frames, the near-duplicate
    signature from the frames as given."""
    from curate.dedup import phash_frames, sequence_signature

    small = to_analysis_size_t(frames, cfg.short_side)
    y = luma_t(small).double()  # (K, h, w)
    frame_means = y.mean(dim=(1, 2))
    out = {"sharpness": sharpness_t(y.float()), "sharpness_model": f"laplacian-var@{cfg.short_side}",
           "luma_mean": float(y.mean()), "luma_std": float(y.std(unbiased=False)),
           "black_share": float((frame_means < cfg.black_luma).double().mean()),
           "exposure_model": f"luma-bt601@{cfg.short_side}/black<{cfg.black_luma:g}"}
    small_np = small.cpu().numpy()
    out.update(score_motion(small_np, pts, fps, cfg))
    out["phash"] = phash_frames(small_np)
    # the near-duplicate signature from the frames as given, as score_clip takes it (8 grey 32x32 thumbnails)
    out["dedup_sig"] = sequence_signature(frames.cpu().numpy() if hasattr(frames, "cpu") else np.asarray(frames))
    for k in ("sharpness", "luma_mean", "luma_std", "black_share", "motion_mean", "motion_p90"):
        if out[k] is not None:
            out[k] = float(np.float32(out[k]))
    return out


class TorchScorer(BasicScorer):
    """:class:`curate.scores.BasicScorer` with :func:`score_clip_torch` on ``device``: the same columns, statuses
    and row order."""

    def __init__(self, cfg: ScoreConfig = ScoreConfig(), device: str = "cuda"):
        super().__init__(cfg)
        self.device = device

    def _score_row(self, blob, pts, fps) -> dict:
        import torch

        from curate.framepack import is_empty_blob, unpack_frames

        if is_empty_blob(blob):
            return {"scores_status": "skipped"}
        try:
            frames = torch.from_numpy(unpack_frames(blob)).to(self.device, non_blocking=True)
            row = score_clip_torch(frames, np.asarray(pts, dtype=np.float64), float(fps), self.cfg)
        except Exception as exc:  # one bad clip must not fail the dataset
            return {"scores_status": f"error:{type(exc).__name__}"}
        row["scores_status"] = "ok"
        return row


# ------------------------------------------------------------------------------------------------------------
# decoders: 4:2:0 planes in batches, on the CPU (PyAV) or the GPU (NVDEC)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class YuvBatch:
    """Consecutive decoded frames: ``y`` ``(B, H, W)``, ``uv`` ``(B, H/2, W/2, 2)`` uint8 tensors, ``pts_s``
    ``(B,)`` seconds from the first frame, ``start`` the decoded-frame index of the first one."""

    start: int
    pts_s: np.ndarray
    y: object
    uv: object
    full_range: bool
    matrix: str = "bt601"  # "bt709" where the stream is tagged so


class DecodeUnavailable(RuntimeError):
    """The requested decoder cannot run here (no NVDEC, an unsupported codec); the message says why."""


def _stream_info(path) -> tuple[bool, list[float] | None, str | None]:
    """(full range?, display-order PTS in seconds from the first frame, "bt709"/"bt601") read with PyAV from
    packets alone (no decoding); ``(False, None, None)`` where PyAV is missing or cannot read the file."""
    try:
        import av
    except ImportError:
        return False, None, None
    from curate.probe import main_video_stream, open_path

    try:
        with av.open(open_path(path)) as container:
            stream = main_video_stream(container)
            if stream is None:
                return False, None, None
            cc = stream.codec_context
            full = cc.format is not None and cc.format.name.startswith("yuvj")
            full = full or int(getattr(cc, "color_range", 0) or 0) == 2  # AVCOL_RANGE_JPEG
            matrix = "bt709" if int(getattr(cc, "colorspace", 2) or 2) == 1 else "bt601"  # AVCOL_SPC_BT709
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
            tb = float(stream.time_base)
    except Exception:
        return False, None, None
    if not pts:
        return full, None, matrix
    pts.sort()
    return full, [(p - pts[0]) * tb for p in pts], matrix


def iter_yuv_nvdec(path, batch: int = 32, gpu: int = 0, max_frames: int = 500_000) -> Iterator[YuvBatch]:
    """Decode ``path`` with NVDEC into batches of NV12 planes on ``cuda:gpu``. Raises :class:`DecodeUnavailable`
    when PyNvVideoCodec cannot open the file or decoder (no NVDEC, codec not supported)."""
    import torch

    why = cuda_status()
    if why is not None:
        raise DecodeUnavailable(why)
    import PyNvVideoCodec as nvc

    dev = torch.device("cuda", gpu)
    torch.zeros(1, device=dev)  # torch's primary context is current before the decoder binds to it
    full, pts_list, matrix = _stream_info(path)
    try:
        dmx = nvc.CreateDemuxer(filename=os.fspath(path))
        dec = nvc.CreateDecoder(gpuid=gpu, codec=dmx.GetNvCodecId(), cudacontext=0, cudastream=0,
                                usedevicememory=True)
        h, w = int(dmx.Height()), int(dmx.Width())
        if matrix is None:  # no PyAV: the demuxer's own colour tag (AVColorSpace; 1 is BT.709)
            matrix = "bt709" if _optional(lambda: int(dmx.ColorSpace()), 2) == 1 else "bt601"
    except Exception as exc:
        raise DecodeUnavailable(f"NVDEC cannot open {os.fspath(path)!r}: {type(exc).__name__}: {exc}") from exc
    tb, fps = _optional(lambda: float(dmx.GetTimebaseNum()) / float(dmx.GetTimebaseDen()), 0.0), \
        _optional(lambda: float(dmx.FrameRate()), 0.0) or 25.0
    ys = torch.empty((batch, h, w), dtype=torch.uint8, device=dev)
    uvs = torch.empty((batch, h // 2, w // 2, 2), dtype=torch.uint8, device=dev)
    raw_pts: list[float] = []
    count, start, fill = 0, 0, 0

    def frames():
        for packet in dmx:
            yield from dec.Decode(packet)
        try:  # flush: an empty packet returns the frames still held for reordering
            yield from dec.Decode(nvc.PacketData())
        except Exception:
            return

    for frame in frames():
        t = torch.from_dlpack(frame)  # (H * 3/2, W) NV12 in the decoder's buffer: copy before the next Decode
        t = t.reshape(t.shape[0], -1)
        if t.dtype != torch.uint8 or t.shape[0] < h + h // 2 or t.shape[1] < w:  # 10-bit, 4:4:4: not NV12
            raise DecodeUnavailable(f"NVDEC gave {tuple(t.shape)} {t.dtype} frames for {w}x{h}, not 8-bit NV12")
        ys[fill].copy_(t[:h, :w])
        uvs[fill].copy_(t[h: h + h // 2, : (w // 2) * 2].reshape(h // 2, w // 2, 2))
        raw_pts.append(_optional(lambda: float(frame.getPTS()), float("nan")))
        fill, count = fill + 1, count + 1
        if fill == batch or count >= max_frames:
            yield _batch(start, raw_pts, pts_list, tb, fps, ys[:fill].clone(), uvs[:fill].clone(), full,
                         matrix)
            start, fill, raw_pts = start + fill, 0, []
        if count >= max_frames:
            return
    if fill:
        yield _batch(start, raw_pts, pts_list, tb, fps, ys[:fill].clone(), uvs[:fill].clone(), full, matrix)


def _optional(fn, default):
    """``fn()``, or ``default`` where this PyNvVideoCodec build lacks the call or it fails."""
    try:
        return fn()
    except Exception:
        return default


def _batch(start, raw_pts, pts_list, tb, fps, y, uv, full, matrix) -> YuvBatch:
    """Times of a batch: the container's display-order PTS where PyAV read them (exact on VFR files), else the
    decoder's PTS in the demuxer's time base, else the frame index at the nominal rate."""
    n = len(raw_pts)
    if pts_list is not None and start + n <= len(pts_list):
        pts = np.asarray(pts_list[start: start + n])
    elif tb > 0 and np.all(np.isfinite(raw_pts)) and len(set(raw_pts)) == n:
        pts = np.asarray(raw_pts) * tb  # made relative to the first frame by the caller
    else:
        pts = (start + np.arange(n)) / fps
    return YuvBatch(start, pts.astype(np.float64), y, uv, full, matrix)


def iter_yuv_pyav(path, batch: int = 32, cfg=None) -> Iterator[YuvBatch]:
    """The same batches from PyAV on the CPU (CPU tensors): the reference the torch features are tested on.
    ``cfg`` is a :class:`curate.frames.DecodeConfig` (its frame limit and deadline apply)."""
    import av
    import torch

    from curate.frames import DecodeConfig, _timed  # one PTS-and-deadline loop for every decoder of this project

    cfg = cfg or DecodeConfig()
    from curate.probe import main_video_stream, open_path

    name = os.fspath(path)
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        ys, uvs, pts, start = [], [], [], 0
        full = False
        matrix = "bt601"
        for index, pts_s, frame in _timed(container, stream, cfg, name, [0]):
            full = frame.format.name.startswith("yuvj") or int(frame.color_range or 0) == 2
            matrix = "bt709" if int(frame.colorspace or 2) == 1 else "bt601"
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            h, w = frame.height, frame.width
            planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes[:3]]
            ys.append(planes[0][:h, :w])
            uvs.append(np.stack([planes[1][: h // 2, : w // 2], planes[2][: h // 2, : w // 2]], axis=-1))
            pts.append(pts_s)
            if len(ys) == batch:
                yield YuvBatch(start, np.asarray(pts), torch.from_numpy(np.stack(ys)),
                               torch.from_numpy(np.stack(uvs)), full, matrix)
                start, ys, uvs, pts = start + len(ys), [], [], []
        if ys:
            yield YuvBatch(start, np.asarray(pts), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(uvs)),
                           full, matrix)


def iter_yuv(path, device: str, batch: int = 32, cfg=None) -> Iterator[YuvBatch]:
    """4:2:0 batches of ``path``: NVDEC on a ``cuda`` device, PyAV on ``cpu``; times start at 0. ``cfg``: a
    :class:`curate.frames.DecodeConfig` (None: its defaults)."""
    if device == "cpu":
        yield from iter_yuv_pyav(path, batch, cfg)
        return
    gpu = int(device.split(":")[1]) if ":" in device else 0
    origin = None
    for b in iter_yuv_nvdec(path, batch, gpu, cfg.max_frames if cfg is not None else 500_000):
        origin = b.pts_s[0] if origin is None else origin
        b.pts_s = b.pts_s - origin
        yield b


# ------------------------------------------------------------------------------------------------------------
# the split stage's two decodes, by device
# ------------------------------------------------------------------------------------------------------------


def iter_thumbs(path, cfg=None, rotation: int | None = None, device: str = "cpu",
                size: tuple[int, int] = THUMB) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(index, pts_s, thumb)`` for every frame, as :func:`curate.frames.iter_thumbs`: on ``cpu`` it is that
    function; on ``cuda`` NVDEC decodes and the thumbnails are area means of the NV12 planes on the GPU (one copy
    of 18x32x3 floats per frame comes back). A file NVDEC cannot open (a codec it lacks, no NVDEC in this process)
    is decoded on the CPU instead; a failure after the first frame raises as the CPU decoder's would. ``cfg``: a
    :class:`curate.frames.DecodeConfig` (None: its defaults)."""
    from curate.frames import DecodeConfig, iter_thumbs as cpu_thumbs

    cfg = cfg or DecodeConfig()

    if device == "cpu":
        yield from cpu_thumbs(path, cfg, rotation, size)
        return
    if rotation is None:
        rotation = _rotation(path)
    batches = iter_yuv(path, device, cfg=cfg)
    try:
        first = next(batches, None)
    except DecodeUnavailable:
        yield from cpu_thumbs(path, cfg, rotation, size)
        return
    for b in _chain(first, batches):
        thumbs = thumbs_from_yuv(b.y, b.uv, b.full_range, rotation, size).cpu().numpy()
        for k in range(len(thumbs)):
            yield b.start + k, float(b.pts_s[k]), thumbs[k]


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


def _rotation(path) -> int:
    """The file's display rotation from PyAV (0 where PyAV is missing)."""
    try:
        from curate.frames import _read_rotation

        return int(_read_rotation(path))
    except Exception:
        return 0


def sample_clip_frames(mp4: bytes, short_side: int, pairs: int, device: str = "cuda") -> tuple[np.ndarray, np.ndarray]:
    """:func:`curate.split.sample_clip_frames` with NVDEC: every frame of the clip decoded on the GPU, the sampled
    pairs converted to RGB at ``short_side`` (even sizes, as there). Returns uint8 ``(K, H, W, 3)`` and times."""
    import torch

    from curate.split import _pair_starts

    fd, tmp = tempfile.mkstemp(suffix=".mp4")  # the NVDEC demuxer reads files
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(mp4)
        batches = list(iter_yuv(tmp, device))
    except DecodeUnavailable:  # decoded on the CPU as the CPU path does
        from curate.split import SampleConfig, sample_clip_frames as cpu_sample

        return cpu_sample(mp4, SampleConfig(pairs=pairs, short_side=short_side))
    finally:
        os.unlink(tmp)
    if not batches:
        raise ValueError("clip decoded to zero frames")
    y = torch.cat([b.y for b in batches])
    uv = torch.cat([b.uv for b in batches])
    pts = np.concatenate([b.pts_s for b in batches])
    keep = sorted({i for s in _pair_starts(len(y), pairs) for i in (s, s + 1) if i < len(y)})
    h, w = y.shape[1:3]
    scale = short_side / min(w, h)
    oh, ow = max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2)
    rgb = rgb_from_yuv(y[keep], uv[keep], oh, ow, batches[0].full_range, batches[0].matrix)
    return rgb.cpu().numpy(), pts[keep]
