"""``tessera demo`` (the README's main command) end to end at smoke size, run as the README runs it: from some other
folder, with a relative ``--out``. samples -> build (local Ray) -> caption -> dataset report -> VAE + DiT ->
eval-text -> training report; then the exported pipeline is loaded and asked for a clip."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.synth import ComboSplit

pytestmark = pytest.mark.timeout(900)


def _rows(dataset: Path, columns: list[str]) -> list[dict]:
    shards = json.loads((dataset / "_manifest.json").read_text())["shards"]
    return [r for s in shards for r in pq.read_table(dataset / s["path"], columns=columns).to_pylist()]


def test_demo_from_another_folder_captions_every_clip_and_exports_a_working_pipeline(tmp_path, monkeypatch, capsys):
    from pipelines.demo import DemoConfig, main
    from model.pipeline import TextToVideo

    import ray

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        status = main(DemoConfig(out="runs/demo", samples=2, size=96, profile="smoke"))
    finally:
        ray.shutdown()  # the build's private local Ray: later test modules start their own
    out = elsewhere / "runs" / "demo"
    where = json.loads((out / "demo.json").read_text())
    assert where["warnings"] == [] and status == 0, where["warnings"]
    assert all(Path(where[k]).is_absolute() and Path(where[k]).exists()
               for k in ("videos", "dataset", "captioned", "report", "pipeline", "train_report"))

    summary = json.loads((out / "dataset" / "summary.json").read_text())
    assert summary["inputs"] == {**summary["inputs"], "total": 2, "accepted": 2, "adds_up": True}
    published = summary["clips"]["published"]
    assert published >= 2  # every synthetic video has several shots
    rows = _rows(out / "captioned", ["clip_id", "source_uri", "caption_short", "caption_status"])
    assert len(rows) == published
    assert all(Path(r["source_uri"]).is_absolute() for r in rows)  # not relative to the working directory
    assert all(r["caption_status"] == "ok" and r["caption_short"] for r in rows), rows  # a caption per clip
    held = {f"{c} {s}" for c, s in ComboSplit.default(0).heldout}
    assert not any(h in r["caption_short"] for r in rows for h in held)  # held-out pairs never reach training

    loop = json.loads((out / "train" / "loop.json").read_text())
    assert loop["stages_done"][:3] == ["vae", "dit", "eval"] and loop["dit"]["steps"] == 8
    assert set(loop["accuracy"]) == {"seen", "heldout"}
    pipe = TextToVideo.from_pretrained(where["pipeline"])
    frames = pipe("a red square moves left", frames=9, size=(48, 32), steps=2, seed=0)  # (W, H)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype.name == "uint8"
    printed = capsys.readouterr().out
    assert "train report" in printed and "seen prompts: colour" in printed


def test_learning_warnings_name_the_stage_that_stayed_under_its_floor():
    from pipelines.loop import LEARN_FLOORS, learning_warnings

    def loop(trip: float | None, gen: float) -> dict:
        ceiling = {"vae_round_trip": {"seen": {"color": trip}}} if trip is not None else {}
        return {"detector_ceiling": ceiling, "accuracy": {"seen": {"color": gen}}, "vae": {"steps": 13},
                "dit": {"steps": 51}}

    floors = LEARN_FLOORS["cpu"]
    assert learning_warnings(loop(0.95, 0.9), floors) == []
    [vae] = learning_warnings(loop(0.0, 0.9), floors)
    assert "VAE" in vae and "0.00" in vae and "13 steps" in vae
    [dit] = learning_warnings(loop(0.95, 0.1), floors)
    assert "DiT" in dit and "0.10" in dit and "51 steps" in dit
    assert len(learning_warnings(loop(None, 0.0), floors)) == 2  # no reading is no proof of learning
    assert learning_warnings(loop(0.0, 0.0), {}) == []  # the smoke profile: plumbing only


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python API block, executed as written against a tiny random pipeline at the demo's path."""
    import re

    import torch

    from model.dit import DiT, dit_config
    from model.text import TextConfig
    from model.vae import build_vae
    from model.pipeline import export_pipeline

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    torch.manual_seed(0)
    export_pipeline(tmp_path / "runs" / "demo" / "train" / "dit" / "pipeline",
                    DiT(dit_config("tiny", latent_channels=16, text_dim=384)), build_vae("tiny"),
                    TextConfig(max_length=32))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["frames"].shape == (17, 64, 64, 3) and scope["frames"].dtype.name == "uint8"
    assert capsys.readouterr().out.strip() == "(17, 64, 64, 3)"
