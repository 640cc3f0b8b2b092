"""A local-Ray build over real third-party videos (../shared/data), checked against their ground truth:
no clip spans a known cut, the rotated file is stored upright, VFR clips are cut by time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FILES = ["pyscenedetect/issue-134-rotate.mp4", "pyscenedetect/goldeneye-vfr-drop3.mp4",
         "pyscenedetect/issue-195-aspect-ratio.mp4", "pyscenedetect/testvideo.mp4"]


@pytest.fixture(scope="module")
def real_build(shared_data, tmp_path_factory):
    ray = pytest.importorskip("ray")
    from pipelines.build import BuildConfig, build

    listing = tmp_path_factory.mktemp("real") / "inputs.txt"
    listing.write_text("".join(f"{shared_data / f}\n" for f in FILES))
    out = listing.parent / "dataset"
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400_000_000, log_to_driver=False,
             ignore_reinit_error=True)
    try:
        summary = build(BuildConfig(input=str(listing), output=str(out), progress=False))
    finally:
        ray.shutdown()
    manifest = json.loads((out / "_manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(out / s["path"]) for s in manifest["shards"]])
    return summary, table


def _cut_times(gt: dict, name: str) -> list[float]:
    entry = gt[name]
    if "cut_times_s" in entry:
        return entry["cut_times_s"]
    fps = entry["file"]["avg_fps"]
    return [f / fps for f in entry["annotation_by_eye"]["hard_cuts"]]


def test_all_real_inputs_accepted(real_build):
    summary, table = real_build
    assert summary["inputs"]["accepted"] == len(FILES) and summary["inputs"]["adds_up"]
    assert set(table.column("source_uri").to_pylist()) == {u for u in table.column("source_uri").to_pylist()}


def test_no_clip_spans_a_ground_truth_cut(real_build, ground_truth, shared_data):
    _, table = real_build
    for name in FILES:
        uri = str(shared_data / name)
        rows = [r for r in table.select(["source_uri", "start_s", "end_s"]).to_pylist() if r["source_uri"] == uri]
        assert rows, f"no clips from {name}"
        for cut in _cut_times(ground_truth, name):
            for r in rows:
                # a clip may end at the cut (its last frame is the one before) but never contain it
                assert not (r["start_s"] + 0.02 < cut < r["end_s"] - 0.02), (name, cut, r)


def test_rotated_source_stored_upright(real_build, shared_data):
    _, table = real_build
    uri = str(shared_data / "pyscenedetect/issue-134-rotate.mp4")
    rows = [r for r in table.to_pylist() if r["source_uri"] == uri]
    for r in rows:
        assert abs(r["source_rotation"]) in (90, 270)
        assert r["height"] > r["width"], "clip not stored in display orientation"
        with av.open(io.BytesIO(r["clip_mp4"])) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (r["width"], r["height"])


def test_vfr_source_cut_by_time(real_build, shared_data):
    _, table = real_build
    uri = str(shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4")
    rows = sorted((r for r in table.to_pylist() if r["source_uri"] == uri), key=lambda r: r["start_s"])
    assert rows and rows[0]["source_is_vfr"]
    starts = [round(r["start_s"], 2) for r in rows]
    # the scene after the 3.754 s cut starts there (to within one source frame of the VFR timeline)
    assert any(abs(s - 3.754) < 0.13 for s in starts), starts
    for r in rows:
        assert r["num_frames"] == r["end_frame"] - r["start_frame"]
