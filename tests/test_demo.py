"""``tessera demo`` (the README's main command) end to end at smoke size: samples -> build (local Ray) -> caption ->
dataset report -> VAE + DiT -> eval-text -> training report, with every output where the demo says it is."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curate.synth import ComboSplit

pytestmark = pytest.mark.timeout(900)


def test_demo_runs_the_whole_system(tmp_path, capsys):
    from pipelines.demo import DemoConfig, main

    import ray

    out = tmp_path / "demo"
    try:
        assert main(DemoConfig(out=str(out), samples=2, size=96, profile="smoke")) == 0
    finally:
        ray.shutdown()  # the build's private local Ray: later test modules start their own
    where = json.loads((out / "demo.json").read_text())
    for key in ("dataset", "captioned", "report", "pipeline", "train_report"):
        assert (out / key).exists() or __import__("pathlib").Path(where[key]).exists(), key
    summary = json.loads((out / "dataset" / "summary.json").read_text())
    assert summary["inputs"]["adds_up"] and summary["clips"]["published"] >= 1
    held = {f"{c} {s}" for c, s in ComboSplit.default(0).heldout}
    captions = [c for f in (out / "captioned" / "clips").glob("*.parquet")
                for c in pq.read_table(f, columns=["caption_short"]).column("caption_short").to_pylist() if c]
    assert captions and not any(h in c for c in captions for h in held)  # held-out pairs never reach training
    loop = json.loads((out / "train" / "loop.json").read_text())
    assert loop["dit"]["steps"] >= 1 and set(loop["accuracy"]) == {"seen", "heldout"}
    printed = capsys.readouterr().out
    assert "train report" in printed and "eval-text" in printed
