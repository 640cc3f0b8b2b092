"""`tessera build --caption openai` goes through the same caption stages as `tessera caption`: a failed caption is
counted in summary.json (`caption.failed` by reason) and failures.parquet, the clip is published with its status,
and the same build again asks the server for exactly the clips that failed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caption.chat import ChatSetupError, OpenAIEndpoint
from caption.expand import ExpandConfig
from caption.frames import FrameConfig
from caption.sources import SourceConfig
from caption.vlm import VLMConfig
from curate.store import open_dataset
from curate.synth import Shot, Transition, render_video
from openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300_000_000,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _videos(root: Path) -> Path:
    """Two videos with a caption sidecar per shot (quoted as a hint in every VLM request of its clips)."""
    root.mkdir()
    for i, (word, shots) in enumerate([
            ("alpha", [Shot("circle", "red", "right", "checker", "blue", 60),
                       Shot("square", "yellow", "up", "noise", "purple", 60)]),
            ("bravo", [Shot("triangle", "green", "left", "gradient", "orange", 60),
                       Shot("star", "white", "down", "checker", "red", 60)])]):
        render_video(root / f"{word}.mp4", shots, [Transition("cut", 0)], fps=24, size=(96, 64), seed=i)
    return root


def _cfg(videos: Path, out: Path, server, **kw):
    from pipelines.build import BuildConfig

    vlm = VLMConfig(backend="openai", model="fake-vlm", frames=FrameConfig(n_frames=2, max_pixels=64 * 48),
                    source=SourceConfig(use="hint"),
                    endpoint=OpenAIEndpoint(base_url=server.base_url, timeout_s=10, max_retries=0, **kw))
    return BuildConfig(input=str(videos), output=str(out), progress=False, ocr=False, caption=vlm,
                       expand=ExpandConfig(backend="off"))


def test_build_caption_failures_are_counted_and_retried_exactly(ray_local, tmp_path, monkeypatch):
    from pipelines.build import build

    videos = _videos(tmp_path / "videos")
    out = tmp_path / "dataset"
    with FakeOpenAIServer(faults={"red circle": "500", "yellow square": "500"}) as server:  # alpha's shots
        monkeypatch.delenv("NOT_SET_KEY_VAR", raising=False)
        with pytest.raises(ChatSetupError, match=r"\$NOT_SET_KEY_VAR \(named by --caption-api-key-env\)"):
            build(_cfg(videos, out, server, api_key_env="NOT_SET_KEY_VAR"))
        assert not server.seen and not (out / "clips").exists()  # nothing touched

        summary = build(_cfg(videos, out, server))
        table = pa.concat_tables(pq.read_table(p) for p in open_dataset(out).shards).to_pylist()
        alpha = {r["clip_id"] for r in table if r["source_uri"].endswith("alpha.mp4")}
        bravo = {r["clip_id"] for r in table if r["source_uri"].endswith("bravo.mp4")}
        assert alpha and bravo, [(r["source_uri"], r["caption_status"]) for r in table]
        assert all(r["caption_status"] == "error:http-500" and r["caption_short"] is None
                   for r in table if r["clip_id"] in alpha)
        assert all(r["caption_status"] == "ok" for r in table if r["clip_id"] in bravo)
        assert summary["caption"]["failed"] == len(alpha) and summary["caption"]["failed_by_reason"] == {
            "http-500": len(alpha)}
        assert summary["clips"]["failed"] == 0  # the clips themselves are fine and published
        failures = [f for f in pq.read_table(out / "failures.parquet").to_pylist() if f["stage"] == "caption"]
        assert {f["clip_id"] for f in failures} == alpha and {f["reason"] for f in failures} == {"http-500"}

        server.faults.clear()
        n = len(server.requests())
        again = build(_cfg(videos, out, server))
        asked = {s.request_id.split("|")[0] for s in server.requests()[n:]}
        assert asked == alpha  # exactly the failed clips, once each
        assert len(server.requests()) - n == len(alpha)
        assert again["caption"]["failed"] == 0 and again["caption"]["ok"] == len(alpha) + len(bravo)
        table = pa.concat_tables(pq.read_table(p) for p in open_dataset(out).shards).to_pylist()
        assert all(r["caption_status"] == "ok" for r in table)
        assert json.loads((out / "summary.json").read_text())["caption"]["failed"] == 0
