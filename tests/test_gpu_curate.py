"""The GPU path of curation (curate/gpu.py) held to the CPU path, on CPU tensors: the same thumbnails (within a few
grey levels), the same scenes, the same scores; and ``--device cuda`` without a GPU falls back with one line.

Tolerances, and why:
- luma (OpenCV 5's fixed-point BT.601): exact; area resize: within 1 level (rounding of the same weights);
- scores from the same RGB frames: sharpness, exposure within 1e-4 relative, motion and pHash identical (the
  same Farneback on the same small frames);
- thumbnails from 4:2:0 planes vs ``curate.frames.iter_thumbs``: mean |difference| <= 2.5 levels (that reader
  skips the deblocking filter and subsamples big planes before its area mean; the torch path does neither);
  scenes equal, boundaries within 1 frame;
- RGB analysis frames from 4:2:0 planes (swscale's bilinear shrink as a torch matrix) vs PyAV's ``to_ndarray``:
  mean |difference| <= 2 levels, luma mean within 1.5 levels (swscale's conversion truncates), sharpness within
  5 %, motion within 0.05 px/frame or 15 % (measured: 1.5 % / 0.7 % sharpness on the synthetic / a real 720p
  video; Farneback on slightly different pixels).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from curate import gpu  # noqa: E402
from curate.clips import ClipConfig  # noqa: E402
from curate.frames import DecodeConfig, iter_thumbs  # noqa: E402
from curate.framepack import pack_frames  # noqa: E402
from curate.scenes import SceneConfig, SceneSplitter  # noqa: E402
from curate.scores import SCORE_COLUMNS, BasicScorer, luma, score_clip, to_analysis_size  # noqa: E402
from curate.split import SampleConfig, SplitConfig, analyse_and_cut, sample_clip_frames  # noqa: E402
from curate.synth import Shot, Transition, render_video  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NO_GPU = not torch.cuda.is_available()


def _smooth_frames(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blurred noise with a moving bright square and one near-black frame: textures the scores react to."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
    frames = []
    for i in range(k):
        f = np.roll(base, shift=2 * i, axis=1).copy()
        f[h // 4: h // 2, (i * 7) % (w // 2): (i * 7) % (w // 2) + w // 8] = 250
        frames.append(f)
    frames[-1] = (frames[-1] // 20).astype(np.uint8)
    return np.stack(frames)


@pytest.fixture(scope="module")
def synth_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "shots.mp4"
    shots = [Shot("circle", "red", "right", "checker", "blue", 40),
             Shot("square", "yellow", "up", "noise", "purple", 40),
             Shot("triangle", "green", "left", "gradient", "orange", 40)]
    render_video(path, shots, [Transition("cut", 0), Transition("dissolve", 10)], fps=24, size=(320, 180), seed=3)
    return path


def _yuv_thumbs(path: Path, max_frames: int) -> list[tuple[int, float, np.ndarray]]:
    out = []
    for b in gpu.iter_yuv(path, "cpu", cfg=DecodeConfig(max_frames=max_frames)):
        th = gpu.thumbs_from_yuv(b.y, b.uv, b.full_range).numpy()
        out += [(b.start + k, float(b.pts_s[k]), th[k]) for k in range(len(th))]
    return out


def _scenes(items, fps: float):
    s = SceneSplitter(SceneConfig(), fps)
    for _, pts, th in items:
        s.push_thumb(th, pts)
    return s.finish()


# ------------------------------------------------------------------------------------------------ features


def test_luma_matches_opencv():
    x = np.random.default_rng(1).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    got = gpu.luma_t(torch.from_numpy(x)).numpy()
    if int(cv2.__version__.split(".")[0]) >= 5:
        np.testing.assert_array_equal(got, luma(x))
    else:  # OpenCV 4's 14-bit weights
        assert np.abs(got - luma(x)).max() <= 1


@pytest.mark.parametrize("shape", [(2, 1080, 1920, 3), (2, 360, 640, 3), (1, 200, 150, 3)])
def test_area_resize_matches_opencv(shape):
    x = _smooth_frames(shape[0], shape[1], shape[2])
    want = to_analysis_size(x, 160)
    got = gpu.to_analysis_size_t(torch.from_numpy(x), 160).numpy()
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= 1


def test_area_matrix_rows_sum_to_one_and_pool_exact_multiples():
    w = gpu.area_matrix(1920, 32)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(32))
    x = torch.arange(1920, dtype=torch.float32)
    torch.testing.assert_close(w @ x, x.view(32, 60).mean(dim=1))


def test_torch_scores_equal_numpy_scores():
    frames = _smooth_frames(12, 160, 284)
    pts = np.repeat(np.arange(6) * 0.5, 2) + np.tile([0.0, 1 / 24], 6)  # six (frame, next frame) pairs
    want = score_clip(frames, pts, 24.0)
    got = gpu.score_clip_torch(torch.from_numpy(frames), pts, 24.0)
    assert set(got) == set(want)
    for k in ("sharpness", "luma_mean", "luma_std", "black_share"):
        assert got[k] == pytest.approx(want[k], rel=1e-4), k
    for k in ("motion_mean", "motion_p90", "motion_static", "motion_jitter", "phash", "dedup_sig", "sharpness_model",
              "exposure_model", "motion_model"):
        assert got[k] == want[k], k
    assert want["black_share"] == pytest.approx(1 / 12)  # the dark frame is seen by both


def test_torch_scores_from_full_size_frames_within_a_percent():
    frames = _smooth_frames(6, 720, 1280, seed=2)
    pts = np.arange(6) / 24.0
    want, got = score_clip(frames, pts, 24.0), gpu.score_clip_torch(torch.from_numpy(frames), pts, 24.0)
    for k in ("sharpness", "luma_mean", "luma_std", "motion_mean"):
        assert got[k] == pytest.approx(want[k], rel=1e-2), k


def test_torch_scorer_batch_matches_basic_scorer():
    frames = _smooth_frames(8, 160, 200)
    pts = (np.arange(8) / 24.0).tolist()
    batch = pa.table({"frames": pa.array([pack_frames(frames), b"", pack_frames(frames[:, :, :0])], pa.binary()),
                      "frames_pts": pa.array([pts, [], pts]), "fps": pa.array([24.0, 24.0, 24.0])})
    want, got = BasicScorer()(batch), gpu.TorchScorer(device="cpu")(batch)
    assert got.column("scores_status").to_pylist() == want.column("scores_status").to_pylist()
    assert got.column("scores_status").to_pylist()[:2] == ["ok", "skipped"]
    assert got.column("scores_status").to_pylist()[2].startswith("error:")
    for c in SCORE_COLUMNS:
        a, b = got.column(c).to_pylist(), want.column(c).to_pylist()
        if c in ("sharpness", "luma_mean", "luma_std"):
            assert a[0] == pytest.approx(b[0], rel=1e-4) and a[1:] == b[1:] == [None, None]
        else:
            assert a == b, c


# ------------------------------------------------------------------------------------------ decode paths


def test_thumbs_from_planes_give_the_same_scenes_on_a_synthetic_video(synth_video):
    want = list(iter_thumbs(synth_video, DecodeConfig()))
    got = _yuv_thumbs(synth_video, 10_000)
    assert [i for i, _, _ in got] == [i for i, _, _ in want]
    np.testing.assert_allclose([p for _, p, _ in got], [p for _, p, _ in want], atol=1e-9)
    diff = np.abs(np.stack([t for *_, t in got]) - np.stack([t for *_, t in want]))
    assert diff.mean() <= 2.5
    a, b = _scenes(want, 24.0), _scenes(got, 24.0)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x.start - y.start) <= 1 and abs(x.end - y.end) <= 1
        assert (x.cut_in, x.cut_out) == (y.cut_in, y.cut_out)


@pytest.mark.skipif(not (SHARED / "pyscenedetect" / "testvideo.mp4").exists(), reason="../shared/data is absent")
def test_thumbs_from_planes_give_the_same_scenes_on_real_footage():
    path = SHARED / "pyscenedetect" / "testvideo.mp4"  # 720p: cuts at 30 and 180, a fade from ~210
    want = list(iter_thumbs(path, DecodeConfig(max_frames=200)))
    got = _yuv_thumbs(path, 200)
    assert len(got) == len(want) == 200
    diff = np.abs(np.stack([t for *_, t in got]) - np.stack([t for *_, t in want]))
    assert diff.mean() <= 2.5
    a, b = _scenes(want, 29.97), _scenes(got, 29.97)
    assert (a[0].start, a[0].end) == (30, 180)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x.start - y.start) <= 1 and abs(x.end - y.end) <= 1
        assert (x.cut_in, x.cut_out) == (y.cut_in, y.cut_out)


REAL_1080P = SHARED / "pyscenedetect" / "issue-236-split-copy.mkv"  # 1920x1080 animation, 48 frames


@pytest.mark.parametrize("which", ["synthetic", "real-1080p"])
def test_rgb_from_planes_scores_like_pyav_frames(which, synth_video):
    if which == "real-1080p" and not REAL_1080P.exists():
        pytest.skip("../shared/data is absent")
    path = synth_video if which == "synthetic" else REAL_1080P
    want_frames, want_t = sample_clip_frames(path.read_bytes(), SampleConfig(pairs=4))
    batches = list(gpu.iter_yuv(path, "cpu"))
    y, uv = torch.cat([b.y for b in batches]), torch.cat([b.uv for b in batches])
    pts = np.concatenate([b.pts_s for b in batches])
    keep = [int(np.argmin(np.abs(pts - t))) for t in want_t]
    got = gpu.rgb_from_yuv(y[keep], uv[keep], *want_frames.shape[1:3], batches[0].full_range,
                           batches[0].matrix).numpy()
    assert batches[0].matrix == ("bt709" if which == "real-1080p" else "bt601")  # the HD file is tagged BT.709
    assert got.shape == want_frames.shape
    assert np.abs(got.astype(int) - want_frames).mean() <= 2.0
    fps = float(1 / np.median(np.diff(pts)))
    a, b = score_clip(want_frames, want_t, fps), score_clip(got, want_t, fps)
    assert b["luma_mean"] == pytest.approx(a["luma_mean"], abs=1.5)
    assert b["sharpness"] == pytest.approx(a["sharpness"], rel=0.05)
    assert b["motion_mean"] == pytest.approx(a["motion_mean"], abs=0.05, rel=0.15)


# -------------------------------------------------------------------------------------- fallback, no GPU


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_gpu_falls_back_with_one_line():
    device, note = gpu.resolve_device("cuda")
    assert device == "cpu" and note.startswith("--device cuda: ") and "\n" not in note
    assert gpu.resolve_device("cpu") == ("cpu", None)
    with pytest.raises(ValueError):
        gpu.resolve_device("tpu")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_split_on_cuda_without_gpu_gives_the_cpu_rows(synth_video):
    probe_row = {"key": "k", "source_uri": str(synth_video), "content_id": "c" * 16, "fps_avg": 24.0, "rotation": 0,
                 "duration_s": 5.4, "num_frames": 130}
    clips = ClipConfig(min_s=1.0, max_s=4.0)  # the shots are 1.7 s
    cpu_rows = analyse_and_cut(str(synth_video), probe_row, SplitConfig(clips=clips))
    gpu_rows = analyse_and_cut(str(synth_video), probe_row, SplitConfig(clips=clips, device="cuda"))
    assert [r["clip_id"] for r in gpu_rows] == [r["clip_id"] for r in cpu_rows]
    assert sum(r["row_kind"] == "clip" for r in cpu_rows) >= 2
    for a, b in zip(cpu_rows, gpu_rows):
        assert a["frames"] == b["frames"] and a["frames_pts"] == b["frames_pts"] and a["clip_mp4"] == b["clip_mp4"]


def test_device_is_not_in_the_fingerprint_and_the_cli_passes_it():
    from pipelines.build import BuildConfig
    from pipelines.cli import build_config_from_args, parser

    a = BuildConfig(input="x", output="y")
    b = BuildConfig(input="x", output="y", device="cuda")
    assert a.fingerprinted() == b.fingerprinted()
    assert b.split_config().device == "cuda"
    args = parser().parse_args(["build", "-i", "v", "-o", "d", "--device", "cuda"])
    assert build_config_from_args(args).device == "cuda"


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_build_with_device_cuda_without_gpu_falls_back_and_gives_the_same_dataset(synth_video, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    import pyarrow.parquet as pq

    from pipelines.build import BuildConfig, build

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300_000_000,
             log_to_driver=False, ignore_reinit_error=True)
    try:
        clips = ClipConfig(min_s=1.0, max_s=4.0)
        tables = {}
        for device in ("cpu", "cuda"):
            out = tmp_path / device
            build(BuildConfig(input=str(synth_video), output=str(out), clips=clips, ocr=False, progress=False,
                              device=device))
            tables[device] = pq.read_table(out / "clips").sort_by("clip_id")
    finally:
        ray.shutdown()
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "--device cuda" in ln]
    assert len(notes) == 1 and "on CPUs instead" in notes[0]
    cpu, cuda = tables["cpu"], tables["cuda"]
    assert cpu.num_rows >= 2
    for c in ("clip_id", "sharpness", "luma_mean", "motion_mean", "phash", "clip_sha256", "build_fingerprint"):
        assert cuda.column(c).to_pylist() == cpu.column(c).to_pylist(), c
