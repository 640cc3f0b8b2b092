"""eval-text: prompts in several phrasings and seeds over the whole vocabulary, accuracy with its spread (per
seed, t-interval, pair bootstrap), prompt expansion measured against the raw prompts, and the run end to end on
a tiny random pipeline, with the expander behind a loopback OpenAI-compatible server."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from curate import synth
from pipelines.eval_text import (
    EvalTextConfig,
    accuracy_table,
    by_phrasing,
    expansion_gain,
    seen_pairs,
    select_prompts,
    spread,
)

pytestmark = pytest.mark.timeout(600)


def test_prompts_cover_every_colour_and_shape_held_out_with_four_seeds_per_prompt():
    split = synth.ComboSplit.default(0)
    rows = select_prompts(EvalTextConfig(), split)
    held = [r for r in rows if r["heldout"]]
    assert min(Counter(r["color"] for r in held).values()) >= 2 * 4 * 16  # 2 pairs x 4 motions x 16 prompts
    assert set(r["color"] for r in held) == set(synth.COLORS) and set(r["shape"] for r in held) == set(synth.SHAPES)
    assert {(r["color"], r["shape"], r["motion"]) for r in held} == set(split.triples(True))
    per_prompt = Counter((r["prompt"], r["shot"]) for r in rows)
    assert set(per_prompt.values()) == {4}  # every prompt text with 4 seeds
    assert {r["seed_index"] for r in rows} == {0, 1, 2, 3}
    for shot in {r["shot"] for r in rows}:  # every phrasing of a shot shares its seeds (a paired comparison)
        mine = [r for r in rows if r["shot"] == shot]
        assert Counter(r["phrasing"] for r in mine) == dict.fromkeys(synth.PHRASINGS, 4)
        assert len({r["seed"] for r in mine}) == 4
    seen = [r for r in rows if not r["heldout"]]
    pairs = {(r["color"], r["shape"]) for r in seen}
    assert len(pairs) == 54 - 18 and len(seen) == len(pairs) * 16  # one motion per seen pair by default
    assert set(Counter(r["motion"] for r in seen).values()) == {9 * 16}  # each direction asked equally often
    assert rows == select_prompts(EvalTextConfig(), split)  # deterministic
    small = select_prompts(EvalTextConfig(limit=1, seeds=5, phrasings=("train", "synonyms")), split)
    assert len(small) == 2 * 2 * 5 and {r["heldout"] for r in small} == {False, True}
    quick = [r for r in select_prompts(EvalTextConfig(limit=4), split) if r["heldout"]]
    assert len({r["shot"] for r in quick}) == 4 and len({(r["color"], r["shape"]) for r in quick}) == 4
    with pytest.raises(ValueError, match="phrasing"):
        select_prompts(EvalTextConfig(phrasings=("shouting",)), split)


def test_seen_group_is_the_pairs_the_training_clips_showed():
    """A small corpus shows few of the pairs the split allows: the seen group asks only those the loop recorded
    (a pair the split allows but no clip showed is no test of memory), the rows of those pairs and every held-out
    row stay what they are without the record, and a quick look (limit) takes its seen shots of different
    colours in turn instead of the first colour's pairs."""
    split = synth.ComboSplit.default(0)
    allowed = sorted({(c, s) for c, s, _ in split.triples(False)})
    shown = [allowed[0], allowed[7], allowed[20]]
    meta = {"extra": {"shown_pairs": [[c, s, 3] for c, s in shown] + [[*split.heldout[0], 1]]}}
    pairs, note = seen_pairs(EvalTextConfig(), meta, split)
    assert pairs == shown and "3 colour-shape pairs the training clips showed" in note  # a held-out record is ignored
    assert seen_pairs(EvalTextConfig(seen="split"), meta, split)[0] is None
    assert seen_pairs(EvalTextConfig(), {"extra": {}}, split)[0] is None  # no record: the split, said so
    everything = select_prompts(EvalTextConfig(), split)
    only = select_prompts(EvalTextConfig(), split, pairs)
    assert {(r["color"], r["shape"]) for r in only if not r["heldout"]} == set(shown)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "shot"} for r in rows]  # noqa: E731 (ids renumber)
    assert strip(r for r in only if r["heldout"]) == strip(r for r in everything if r["heldout"])
    assert strip(r for r in only if not r["heldout"]) == strip(
        r for r in everything if not r["heldout"] and (r["color"], r["shape"]) in set(shown))
    quick = [r for r in select_prompts(EvalTextConfig(limit=4), split) if not r["heldout"]]
    assert len({r["color"] for r in quick}) == 4  # before: the first colour's four pairs
    assert synth.caption_pair("an orange circle grows over a purple checkered background") == ("orange", "circle")
    assert synth.caption_pair("a dog runs on a beach") is None and synth.caption_pair(None) is None
    with pytest.raises(ValueError, match="seen"):
        seen_pairs(EvalTextConfig(seen="all"), meta, split)


def _rows(accuracies: dict[int, list[bool]], heldout: bool = True) -> list[dict]:
    """One row per verdict: seed index -> all-right / all-wrong clips, spread over pairs in turn."""
    pairs = [("red", "star"), ("blue", "circle"), ("pink", "hexagon")]
    rows = []
    for k, verdicts in accuracies.items():
        for i, ok in enumerate(verdicts):
            c, s = pairs[(i // 2) % len(pairs)]
            rows.append({"heldout": heldout, "color": c, "shape": s, "seed_index": k, "shot": i,
                         "phrasing": "train", "correct": dict.fromkeys(("color", "shape", "motion"), ok)})
    return rows


def test_spread_reports_each_seed_a_t_interval_and_a_pair_bootstrap():
    rows = _rows({0: [True] * 6, 1: [True] * 3 + [False] * 3, 2: [True] * 6, 3: [False] * 6})
    s = spread(rows)
    assert s["per_seed"] == [1.0, 0.5, 1.0, 0.0]
    sd = float(np.std([1.0, 0.5, 1.0, 0.0], ddof=1))
    assert s["seed_sd"] == pytest.approx(sd)
    half = 3.182 * sd / 2  # t(0.975, 3 df) x sd / sqrt(4)
    assert s["ci95_seeds"] == pytest.approx([0.625 - half, 0.625 + half])
    lo, hi = s["ci95_pairs"]
    assert lo <= 0.625 <= hi and hi - lo > 0  # the pairs differ, so resampling them moves the mean
    table = accuracy_table(rows)["heldout"]
    assert table["attribute"] == 0.625 and table["per_seed"] == s["per_seed"]
    assert spread(_rows({0: [True, False]}))["ci95_seeds"] is None  # one seed: no interval over seeds
    same = spread(_rows({k: [True, False, True] for k in range(4)}))
    assert same["seed_sd"] == 0 and same["ci95_seeds"] == [pytest.approx(2 / 3)] * 2


def test_expansion_gain_pairs_each_expanded_prompt_with_its_raw_twin():
    raw = _rows({0: [False] * 6, 1: [True] * 6})
    expanded = [{**r, "expanded": True, "correct": dict.fromkeys(r["correct"], True)} for r in raw]
    gain = expansion_gain(raw + expanded)["heldout"]
    assert gain["n"] == 12 and gain["raw"] == 0.5 and gain["expanded"] == 1.0 and gain["gain"] == 0.5
    assert gain["ci95"][0] <= 0.5 <= gain["ci95"][1]
    phr = by_phrasing(raw + expanded)
    assert set(phr) == {"train", "train expanded"} and phr["train expanded"]["heldout"]["attribute"] == 1.0
    assert expansion_gain(raw) == {}


def test_constant_baseline_and_confusion_expose_a_prompt_blind_model():
    """A model that draws circles whatever the prompt scores the share of circle prompts on shape, which the
    constant baseline reports beside it; the confusion matrix shows where the answers went."""
    from pipelines.eval_text import accuracy_table, confusion, constant_baseline

    rows = []
    for heldout, truths in ((False, ["circle", "circle", "square", "star"]), (True, ["circle", "triangle"])):
        for shape in truths:
            rows.append({"heldout": heldout, "color": "red", "shape": shape, "motion": "left",
                         "generated": {"color": "red", "shape": "circle", "motion": None},
                         "correct": {"color": True, "shape": shape == "circle", "motion": False}})
    base = constant_baseline(rows)
    assert base["seen"]["shape"] == 0.5 and base["heldout"]["shape"] == 0.5
    assert base["seen"]["color"] == 1.0 and base["seen"]["n"] == 4
    assert base["seen"]["all"] == 0.5  # red + circle + left together: the two circle prompts
    assert accuracy_table(rows)["seen"]["shape"] == base["seen"]["shape"]  # no better than blind
    m = confusion(rows, "generated", "shape")
    assert m == {"circle": {"circle": 3}, "square": {"circle": 1}, "star": {"circle": 1}, "triangle": {"circle": 1}}
    assert confusion(rows, "generated", "motion") == {"left": {"none": 6}}


def test_accuracy_table_counts_each_group_and_attribute():
    from pipelines.eval_text import accuracy_table

    def row(heldout, c, s, m):
        return {"heldout": heldout, "color": "red", "shape": "star", "correct": {"color": c, "shape": s, "motion": m}}

    t = accuracy_table([row(False, True, True, True), row(False, True, False, False),
                        row(True, False, True, True)])
    assert {k: t["seen"][k] for k in ("n", "color", "shape", "motion", "attribute", "all")} == {
        "n": 2, "color": 1.0, "shape": 0.5, "motion": 0.5, "attribute": pytest.approx(2 / 3), "all": 0.5}
    assert t["heldout"]["n"] == 1 and t["heldout"]["attribute"] == pytest.approx(2 / 3) and t["heldout"]["all"] == 0.0


def test_eval_text_batches_and_detector_pool_change_no_verdict(tmp_path):
    """The batched generation and the detector processes are plumbing: the same batch read inline or by the pool
    gives identical rows in prompt order, and the ground-truth rows do not depend on the batch size."""
    import torch

    from model.dit import DiT, dit_config
    from model.text import TextConfig
    from model.vae import build_vae
    from pipelines.eval_text import EvalTextConfig, main
    from model.pipeline import export_pipeline

    torch.manual_seed(0)
    dit, vae = DiT(dit_config("tiny", latent_channels=16, text_dim=384)), build_vae("tiny")
    with torch.no_grad():  # off the zero init, so the generations depend on the prompt
        for p in list(dit.parameters()) + list(vae.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    pipe = export_pipeline(tmp_path / "pipeline", dit, vae, TextConfig(max_length=32))
    base = EvalTextConfig(pipeline=str(pipe), size=32, frames=9, steps=2, cfg=3.0, device="cpu", limit=3, seeds=1,
                          phrasings=("train",))
    runs = {name: main(dataclasses.replace(base, out=str(tmp_path / name), batch=b, workers=w))
            for name, b, w in (("one", 1, 0), ("inline", 4, 0), ("pool", 4, 2))}
    rows = {name: r["prompts"] for name, r in runs.items()}
    assert len(rows["pool"]) == 6 and [r["prompt"] for r in rows["pool"]] == [r["prompt"] for r in rows["one"]]
    assert rows["pool"] == rows["inline"]  # every detection, verdict and field, in order
    assert runs["pool"]["ground_truth"] == runs["inline"]["ground_truth"] == runs["one"]["ground_truth"]
    assert runs["pool"]["accuracy"] == runs["inline"]["accuracy"]
    assert (tmp_path / "pool" / "sheet.png").stat().st_size > 1000


def test_shape_is_also_read_on_early_and_late_frames():
    """A clip that is a square for its first 9 frames and a circle after reads as a square early and a circle
    late: the windowed readout says where in the clip a shape is lost."""
    from curate import synth
    from curate.detect import DetectConfig
    from pipelines.eval_text import _detect_row, frame_windows, shape_by_window

    assert frame_windows(17) == {"early": slice(0, 5), "late": slice(9, 17)}
    assert frame_windows(9) == {"early": slice(0, 5), "late": slice(5, 9)} and frame_windows(5) is None
    shots = {s: synth.Shot(s, "red", "right", "gradient", "blue", 17) for s in ("square", "circle")}
    clips = {s: synth.render_clip(shot, (128, 128), seed=4) for s, shot in shots.items()}
    spliced = np.concatenate([clips["square"][:9], clips["circle"][9:]])
    prompt = {"prompt": shots["square"].caption, "color": "red", "shape": "square", "motion": "right",
              "heldout": False}
    row = _detect_row(prompt, {"render": clips["square"], "vae": clips["square"], "generated": spliced},
                      DetectConfig())
    assert row["vae"]["shape_early"] == row["vae"]["shape_late"] == "square"
    assert row["generated"]["shape_early"] == "square" and row["generated"]["shape_late"] == "circle"
    assert "shape_early" not in row["render"]  # ground truth needs no windows
    table = shape_by_window([row, {**row, "heldout": True}])
    assert table["generated"]["seen"] == {"n": 1, "whole": float(row["generated"]["shape"] == "square"),
                                          "early": 1.0, "late": 0.0}
    assert table["vae"]["heldout"]["late"] == 1.0


def _tiny_pipeline(path):
    import torch

    from model.dit import DiT, dit_config
    from model.text import TextConfig
    from model.vae import build_vae
    from model.pipeline import export_pipeline

    torch.manual_seed(0)
    dit, vae = DiT(dit_config("tiny", latent_channels=16, text_dim=384)), build_vae("tiny")
    with torch.no_grad():
        for p in list(dit.parameters()) + list(vae.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return export_pipeline(path, dit, vae, TextConfig(max_length=48))


def test_eval_text_reports_phrasings_seeds_and_the_expanders_gain(tmp_path, monkeypatch):
    """End to end at 64 px on a random pipeline: 4 phrasings x 4 seeds of one seen and one held-out shot, each
    also rewritten by the expander (a loopback OpenAI-compatible server); the tables hold every phrasing, raw and
    expanded, the spread of every accuracy and the paired gain of expansion; the detector reads every ground
    truth right at this size."""
    from openai_server import FakeOpenAIServer

    from pipelines.eval_text import cli, main

    pipe = _tiny_pipeline(tmp_path / "pipeline")
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("TESSERA_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("TESSERA_LLM_MODEL", "fake-llm")
        res = main(EvalTextConfig(pipeline=str(pipe), out=str(tmp_path / "ev"), size=64, frames=5, steps=1,
                                  cfg=2.0, device="cpu", limit=1, expand=True, workers=0))
    rows = res["prompts"]
    assert len(rows) == 2 * 2 * 4 * 4  # (seen, held-out) x (raw, expanded) x phrasings x seeds
    expanded = [r for r in rows if r["expanded"]]
    assert all(r["expand_status"] == "ok" and r["prompt"].startswith("A detailed shot showing ")
               and r["raw_prompt"] in r["prompt"] for r in expanded)
    assert set(res["by_phrasing"]) == {p + e for p in synth.PHRASINGS for e in ("", " expanded")}
    for split in ("seen", "heldout"):
        acc = res["accuracy"][split]
        assert acc["n"] == 16 and len(acc["per_seed"]) == 4 and len(acc["ci95_seeds"]) == 2
        assert acc["ci95_seeds"][0] <= acc["attribute"] <= acc["ci95_seeds"][1]
        assert res["expansion"][split]["n"] == 16
        assert res["detector_ceiling"]["render"][split]["all"] == 1.0  # 4 seeds of one shot each, read right
    assert len(res["ground_truth"]) == 8  # one render per shot and seed, not per phrasing
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| synonyms expanded | heldout | 4 |" in md and "Prompt expansion, paired" in md
    assert "95 % (seeds)" in md
    # the CLI: its flags reach the run; a bad phrasing or pipeline is a clear error (exit 2)
    assert cli(["--pipeline", str(pipe), "--out", str(tmp_path / "cli"), "--limit", "1", "--steps", "1",
                "--frames", "5", "--size", "64", "--device", "cpu", "--seeds", "4", "--phrasings",
                "train,distractor", "--seen-motions", "0"]) == 0
    got = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert got["config"]["phrasings"] == ["train", "distractor"] and len(got["prompts"]) == 2 * 2 * 4
    assert cli(["--pipeline", str(pipe), "--device", "cpu", "--phrasings", "yelling"]) == 2
    assert cli(["--pipeline", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
