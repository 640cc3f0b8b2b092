"""The footage of ``benchmarks/bench_curate_gpu.py``: real videos of ../shared/data spliced into 720p and 1080p
H.264 files (``prepare``), a synthetic fallback where those are absent (``synth_footage``), and what a folder of
footage holds (``footage_files``, ``video_info``)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# Real footage spliced into the benchmark videos: (file under ../shared/data, seconds taken from its start).
SOURCES = (
    ("pyscenedetect/testvideo.mp4", 24.0),  # 1280x720: cuts, fades, a dissolve
    ("pyscenedetect/issue-195-aspect-ratio.mp4", 14.0),  # PAL broadcast: hard cuts
    ("intel-sample-videos/car-detection.mp4", 8.0),  # static camera, cars
    ("intel-sample-videos/one-by-one-person-detection.mp4", 8.0),  # static camera, people
    ("intel-sample-videos/bottle-detection.mp4", 6.0),  # hands moving bottles
)
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
KBPS = {"720p": 2500, "1080p": 4500}  # H.264 bit rates of web and camera footage at these sizes (decode cost grows
# with the bit rate: a low-rate file would flatter the CPU decoder)
OUT_FPS = 30

# ------------------------------------------------------------------------------------------------------------
# footage
# ------------------------------------------------------------------------------------------------------------


def prepare(out: Path, seconds_scale: float = 0.5) -> None:
    """Splice the SOURCES (scaled to cover, centre-cropped, every decoded frame in order at 30 fps) into one H.264
    file per size at ``KBPS``: ``real-720p.mp4`` and ``real-1080p.mp4`` (30 s each by default, ~26 MB together,
    small enough to carry to the GPU machine), plus ``footage.json``."""
    import av
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    meta = {"sources": [], "fps": OUT_FPS, "kbps": KBPS, "files": {}}
    for name, (w, h) in SIZES.items():
        path = out / f"real-{name}.mp4"
        frames = 0
        with av.open(str(path), "w") as dst:
            st = dst.add_stream("libx264", rate=OUT_FPS)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.bit_rate = KBPS[name] * 1000
            st.options = {"preset": "veryfast"}
            for rel, secs in SOURCES:
                src_path = SHARED / rel
                n_max = int(secs * seconds_scale * OUT_FPS)
                with av.open(str(src_path)) as src:
                    for k, frame in enumerate(src.decode(video=0)):
                        if k >= n_max:
                            break
                        rgb = frame.to_ndarray(format="rgb24")
                        s = max(w / rgb.shape[1], h / rgb.shape[0])
                        big = cv2.resize(rgb, (max(w, round(rgb.shape[1] * s)), max(h, round(rgb.shape[0] * s))),
                                         interpolation=cv2.INTER_CUBIC)
                        y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
                        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y0: y0 + h, x0: x0 + w]), "rgb24")
                        for pkt in st.encode(vf):
                            dst.mux(pkt)
                        frames += 1
                if name == "720p":
                    meta["sources"].append({"file": rel, "frames": min(n_max, k + 1)})
            for pkt in st.encode():
                dst.mux(pkt)
        meta["files"][path.name] = {"size": [w, h], "frames": frames, "bytes": path.stat().st_size}
        print(f"wrote {path} ({frames} frames, {path.stat().st_size / 1e6:.1f} MB)", flush=True)
    (out / "footage.json").write_text(json.dumps(meta, indent=2))


def synth_footage(out: Path, seconds: float = 20.0) -> None:
    """Fallback where no real footage was brought: synthetic shots (curate.synth) encoded by OpenCV (MPEG-4 Part
    2, NVDEC decodes it), one file per size. Not real footage: the report says so."""
    import cv2

    from curate.synth import random_program, render_frames

    out.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in SIZES.items():
        path = out / f"synth-{name}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(OUT_FPS), (w, h))
        written, seed = 0, 0
        while written < seconds * OUT_FPS:
            frames, _ = render_frames(random_program(seed, fps=OUT_FPS, size=(w // 4, h // 4)))
            for f in frames:
                writer.write(cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR))
            written, seed = written + len(frames), seed + 1
        writer.release()
        print(f"wrote {path} ({written} frames, synthetic)", flush=True)


def footage_files(folder: Path) -> dict[str, Path]:
    """``{"720p": path, "1080p": path}`` from a folder (by frame height, read with OpenCV)."""
    import cv2

    found = {}
    for p in sorted(folder.glob("*.mp4")):
        cap = cv2.VideoCapture(str(p))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
        for name, (_, sh) in SIZES.items():
            if h == sh and name not in found:
                found[name] = p
    return found


def video_info(path: Path) -> tuple[float, int]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps, n = float(cap.get(cv2.CAP_PROP_FPS) or OUT_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return fps, n
