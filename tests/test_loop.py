"""The text-faithfulness corpus and the train-and-evaluate loop: held-out pairs never reach training, the shot
corpus is deterministic and decodable (with PyAV or, where it is missing, OpenCV), and the whole loop runs on the
CPU at tiny sizes and writes its eval and report."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import synth
from curate.synth import ComboSplit

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """A script of ``benchmarks/`` (not a package) as a module."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_programs_exclude_held_out_pairs_and_are_unchanged_without_them():
    split = ComboSplit.default(0)
    seen_pairs = set()
    for seed in range(40):
        plain = synth.random_program(seed)
        assert synth.random_program(seed, exclude=()) == plain  # an empty exclude draws the old program
        program = synth.random_program(seed, exclude=split.heldout)
        pairs = {(s.color, s.shape) for s in program.shots}
        assert not pairs & set(split.heldout), seed
        seen_pairs |= {(s.color, s.shape) for s in plain.shots}
    assert seen_pairs & set(split.heldout)  # without exclusion they do occur: the test can fail


def test_still_shapes_are_drawn_upright():
    """A square that is not rotating is axis-aligned (so it differs from a diamond); only "rotate" turns shapes."""
    sq = synth.render_clip(synth.Shot("square", "red", "left", "checker", "blue", 3), (96, 96), seed=1)[0]
    dm = synth.render_clip(synth.Shot("diamond", "red", "left", "checker", "blue", 3), (96, 96), seed=1)[0]

    def extent(img):
        ys, xs = np.nonzero(np.all(img == synth.COLORS["red"], axis=-1))
        return len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))

    assert extent(sq) > 0.95 and extent(dm) < 0.6


def _corpus(tmp_path, n=12, size=32):
    from pipelines.loop import write_shot_corpus

    return write_shot_corpus(tmp_path / "corpus", n, size=size, frames=9, workers=1, clips_per_shard=5)


def test_shot_corpus_is_deterministic_captioned_and_holds_out_pairs(tmp_path):
    from curate.media import decode_frames

    info = _corpus(tmp_path)
    assert info["clips"] == 12 and len(info["shards"]) == 3
    rows = [r for f in sorted((tmp_path / "corpus" / "clips").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 12 and len({r["clip_id"] for r in rows}) == 12
    held = {f"{c} {s}" for c, s in ComboSplit.default(0).heldout}
    for r in rows:
        assert r["width"] == r["height"] == 32 and r["num_frames"] == 9
        assert not any(h in r["caption_short"] for h in held)
        assert decode_frames(r["clip_mp4"], 0, 9, 1).shape == (9, 32, 32, 3)
    again = tmp_path / "again"
    from pipelines.loop import write_shot_corpus

    write_shot_corpus(again, 12, size=32, frames=9, workers=2, clips_per_shard=5)
    rows2 = [r for f in sorted((again / "clips").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [r["caption_short"] for r in rows2] == [r["caption_short"] for r in rows]
    assert [r["clip_mp4"] for r in rows2] == [r["clip_mp4"] for r in rows]  # the same bytes, whatever the workers


@pytest.mark.parametrize("vae_preset,patch", [("tiny", (1, 2, 2)), ("tiny-f4c8", (1, 4, 4))], ids=["f8", "f4"])
def test_loop_trains_generates_evaluates_and_reports(tmp_path, vae_preset, patch):
    """The whole loop at smoke size on the CPU: real VAE and DiT training, a from_pretrained pipeline that records
    its split, eval-text whose detector reads the ground-truth renders right, and a report page with its figures.
    Also with a 4x-spatial VAE and 4x4 patches, the VAE trained on shorter clips than the DiT."""
    from model.pipeline import TextToVideo, read_pipeline_config
    from pipelines.loop import PROFILES, override, run

    _corpus(tmp_path, n=16, size=32)
    cfg = override(PROFILES["smoke"], dict(dataset=str(tmp_path / "corpus"), out=str(tmp_path / "run"),
                                           frames=9, device="cpu", vae_preset=vae_preset, dit_patch=patch,
                                           vae_frames=5 if patch != (1, 2, 2) else 0, vae_warmup=2, dit_warmup=3,
                                           eval_cfg_sweep=(2.0,) if patch == (1, 2, 2) else (),
                                           eval_steps_sweep=(1,) if patch != (1, 2, 2) else (),
                                           eval_shift_sweep=(2.5,) if patch == (1, 2, 2) else (),
                                           dit_hidden=96 if patch == (1, 2, 2) else 0,
                                           eval_solver_sweep=("sde:0.5",) if patch != (1, 2, 2) else (),
                                           dit_stop_after_s=3600.0 if patch != (1, 2, 2) else 0.0))
    summary = run(cfg)
    assert summary["vae"]["steps"] == cfg.vae.steps and summary["dit"]["steps"] == cfg.dit.steps
    if cfg.dit_stop_after_s:  # the DiT's budget is what the VAE left of the box
        assert 3000 < summary["dit"]["time_budget_s"] < 3600 - summary["seconds"]["vae_s"]
    else:
        assert summary["dit"]["time_budget_s"] == cfg.dit.time_budget_s
    parts = summary["dit"]["seconds"]  # where the DiT stage's time went; the samples are timed inside the loop
    assert set(parts) == {"setup", "loop", "samples", "export"} and 0 < parts["samples"] <= parts["loop"]
    assert parts["setup"] + parts["loop"] + parts["export"] <= summary["seconds"]["dit_s"] + 0.35  # samples: inside loop
    vae_cfg = json.loads((tmp_path / "run" / "vae" / "config.json").read_text())
    dit_cfg = json.loads((tmp_path / "run" / "dit" / "config.json").read_text())
    assert vae_cfg["num_frames"] == [cfg.vae_frames or cfg.frames] and vae_cfg["warmup_steps"] == 2
    assert dit_cfg["dit"]["patch"] == list(patch) and dit_cfg["train"]["warmup_steps"] == 3
    assert dit_cfg["dit"]["hidden"] == (cfg.dit.hidden or 64) and dit_cfg["dit"]["heads"] == 4  # tiny's heads
    assert read_pipeline_config(summary["pipeline"])["dit"]["hidden"] == dit_cfg["dit"]["hidden"]
    meta = read_pipeline_config(summary["pipeline"])
    assert ComboSplit.from_dict(meta["extra"]["combo_split"]) == ComboSplit.default(cfg.split_seed)
    assert meta["extra"]["train_size"] == 32
    captions = [c for f in sorted((tmp_path / "corpus" / "clips").glob("*.parquet"))
                for c in pq.read_table(f, columns=["caption_short"]).column("caption_short").to_pylist()]
    assert {(c, s): n for c, s, n in meta["extra"]["shown_pairs"]} == Counter(map(synth.caption_pair, captions))  # per clip
    frames = TextToVideo.from_pretrained(summary["pipeline"])("a red star moves left", frames=9, size=(32, 32), steps=2)
    assert frames.shape == (9, 32, 32, 3)
    # 1 seen + 1 held-out shot, 4 phrasings x 4 seeds each, at 64 px; the detector reads every ground-truth render
    assert summary["accuracy"]["seen"]["n"] == 16 and summary["accuracy"]["heldout"]["n"] == 16
    assert len(summary["accuracy"]["heldout"]["per_seed"]) == 4 and summary["accuracy"]["heldout"]["ci95_pairs"]
    assert summary["detector_ceiling"]["render"]["heldout"]["all"] == 1.0
    assert summary["detector_ceiling"]["render"]["seen"]["all"] == 1.0
    results = json.loads((tmp_path / "run" / "eval-text" / "results.json").read_text())
    assert {p["heldout"] for p in results["prompts"]} == {False, True} and results["size"] == 64
    assert {p["phrasing"] for p in results["prompts"]} == set(synth.PHRASINGS) and set(results["by_phrasing"]) == set(
        synth.PHRASINGS)
    assert all(set(p["correct"]) == {"color", "shape", "motion"} for p in results["prompts"])
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    for figure in ("curves.png", "vae-preview.png", "dit-samples.png", "eval-sheet.png"):
        assert figure in page and (tmp_path / "run" / "report" / figure).stat().st_size > 1000
    assert (tmp_path / "run" / "loop.json").is_file()
    assert "best constant answer" in (tmp_path / "run" / "eval-text" / "results.md").read_text()
    if cfg.eval_cfg_sweep:  # each further guidance scale is a whole eval of its own, recorded beside the main one
        assert list(summary["cfg_sweep"]) == ["2", f"{cfg.eval.cfg:g}"]
        assert summary["cfg_sweep"][f"{cfg.eval.cfg:g}"]["accuracy"] == summary["accuracy"]
        other = json.loads((tmp_path / "run" / "eval-text-cfg2" / "results.json").read_text())
        assert other["config"]["cfg"] == 2.0 and other["accuracy"] == summary["cfg_sweep"]["2"]["accuracy"]
    else:
        assert "cfg_sweep" not in summary
    if cfg.eval_steps_sweep:  # the same for sampling steps, at the main guidance scale
        assert list(summary["steps_sweep"]) == ["1", f"{cfg.eval.steps:g}"]
        other = json.loads((tmp_path / "run" / "eval-text-steps1" / "results.json").read_text())
        assert other["config"]["steps"] == 1 and other["config"]["cfg"] == cfg.eval.cfg
        assert other["accuracy"] == summary["steps_sweep"]["1"]["accuracy"]
        assert summary["steps_sweep"][f"{cfg.eval.steps:g}"]["accuracy"] == summary["accuracy"]
    else:
        assert "steps_sweep" not in summary
    if cfg.eval_shift_sweep:  # and for the sampler's time shift; the main eval's key is the shift it trained with
        assert list(summary["shift_sweep"]) == [f"{cfg.dit.time_shift:g}", "2.5"]
        other = json.loads((tmp_path / "run" / "eval-text-sample_shift2.5" / "results.json").read_text())
        assert other["time_shift"] == 2.5 and other["config"]["sample_shift"] == 2.5
        assert results["time_shift"] == cfg.dit.time_shift
        assert other["accuracy"] == summary["shift_sweep"]["2.5"]["accuracy"]
    else:
        assert "shift_sweep" not in summary
    if cfg.eval_solver_sweep:  # a string-valued sweep keeps its order and gets a file-safe folder
        assert list(summary["solver_sweep"]) == ["euler", "sde:0.5"]
        other = json.loads((tmp_path / "run" / "eval-text-solversde_0.5" / "results.json").read_text())
        assert other["config"]["solver"] == "sde:0.5"
        assert other["accuracy"] == summary["solver_sweep"]["sde:0.5"]["accuracy"]
    if vae_preset != "tiny":
        return
    # the CLI: its flags reach the run, and a missing pipeline is a clear error (exit 2), not a traceback
    from pipelines.eval_text import cli

    again = tmp_path / "cli"
    assert cli(["--pipeline", summary["pipeline"], "--out", str(again), "--limit", "1", "--steps", "2",
                "--heldout-repeat", "2", "--frames", "9", "--cfg", "3", "--device", "cpu", "--sample-shift", "0",
                "--solver", "sde:0.5", "--phrasings", "train"]) == 0
    res = json.loads((again / "results.json").read_text())
    assert (res["config"]["limit"], res["config"]["steps"], res["config"]["heldout_repeat"], res["config"]["cfg"]) \
        == (1, 2, 2, 3.0)
    assert res["config"]["solver"] == "sde:0.5" and res["config"]["sample_shift"] == 0 and res["time_shift"] == 0
    assert res["size"] == 32 and len(res["prompts"]) == 8  # the training size recorded in the pipeline; 2 x 4 seeds
    assert set(res["confusion"]["generated"]) == {"color", "shape", "motion"}
    assert cli(["--pipeline", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert cli(["--pipeline", summary["pipeline"], "--device", "cpu", "--limit", "1", "--solver", "rk4"]) == 2


def test_cpu_profile_trains_by_steps_at_sizes_its_models_accept():
    """The demo's profile: no clock anywhere (a busy machine takes longer and learns the same), and every size is
    one the VAE preset and the DiT patch accept, so the demo cannot fail on a shape after minutes of work."""
    from model.vae import PRESETS
    from pipelines.eval_text import MIN_SIZE
    from pipelines.loop import LEARN_FLOORS, PROFILES

    cpu = PROFILES["cpu"]
    assert cpu.vae.time_budget_s == cpu.dit.time_budget_s == cpu.dit_stop_after_s == 0
    assert cpu.vae.steps > 0 and cpu.dit.steps > 0
    vae = PRESETS[cpu.vae.preset]
    assert cpu.size % (vae.spatial_factor * cpu.dit.patch[1]) == 0 and cpu.dit.patch[1] == cpu.dit.patch[2]
    for frames in (cpu.frames, cpu.vae_frames or cpu.frames):
        assert (frames - 1) % vae.time_factor == 0
    assert (cpu.eval.size or cpu.size) >= MIN_SIZE  # the detector's smallest trusted size
    assert set(LEARN_FLOORS["cpu"]) == {"vae_round_trip_color", "generated_color"}


def test_run_text_loop_set_overrides_any_loop_field():
    from pipelines.loop import PROFILES, override

    mod = _benchmark("run_text_loop")
    got = mod.parse_set(["dit_lr=1e-3", "dit_patch=[1,2,2]", "vae_preset=small", "dit_time_shift=1", "compile=true",
                         "vae.steps=7", "eval.solver=heun", 'dit.caption_mix=[["long",1.0]]'], PROFILES["gpu"])
    assert got == {"dit_lr": 1e-3, "dit_patch": (1, 2, 2), "vae_preset": "small", "dit_time_shift": 1, "compile": True,
                   "vae.steps": 7, "eval.solver": "heun", "dit.caption_mix": (("long", 1.0),)}
    cfg = override(PROFILES["gpu"], got)
    assert cfg.dit.patch == (1, 2, 2) and cfg.vae.preset == "small" and cfg.dit.time_shift == 1.0
    assert cfg.dit.lr == 1e-3 and cfg.dit.compile and cfg.vae.steps == 7 and cfg.eval.solver == "heun"
    assert cfg.dit.caption_mix == (("long", 1.0),) and cfg.dit.preset == PROFILES["gpu"].dit.preset  # the rest kept
    assert PROFILES["gpu"].dit.patch == (1, 4, 4)  # the profile itself is left alone
    for bad in (["no_such_field=1"], ["dit_lr"], ["dit.no_such_field=1"], ["vae.seed=3"]):
        with pytest.raises(SystemExit):
            mod.parse_set(bad, PROFILES["gpu"])


def test_shot_corpus_columns_have_the_build_types(tmp_path):
    from curate.schema import CLIP_SCHEMA, clip_columns_schema

    _corpus(tmp_path, n=4, size=32)
    schema = pq.read_schema(next((tmp_path / "corpus" / "clips").glob("*.parquet")))
    for name in schema.names:
        assert schema.field(name).type == CLIP_SCHEMA.field(name).type, name
    with pytest.raises(KeyError):
        clip_columns_schema(("clip_id", "no_such_column"))


def test_vae_ceiling_probe_trains_each_preset_and_tables_it(tmp_path):
    mod = _benchmark("probe_vae_ceiling")
    assert mod.main(["--out", str(tmp_path / "out"), "--presets", "tiny,tiny-f4c8,tiny-f4c8-late", "--seconds", "0.5", "--clips",
                     "6", "--size", "32", "--limit", "3", "--workers", "0"]) == 0
    got = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert [r["preset"] for r in got["rows"]] == ["tiny", "tiny-f4c8", "tiny-f4c8-late"]
    assert [r["stride"] for r in got["rows"]] == [[4, 8, 8], [4, 4, 4], [4, 4, 4]]
    assert [r["latent_dims_per_16px"] for r in got["rows"]] == [64, 128, 128]
    # --limit 3: 3 shots of each split (seen, held-out) x eval-text's 4 seeds, read as eval-text reads them
    assert all(r["n"] == 24 and r["steps"] >= 1 for r in got["rows"])
    assert all(0 <= r[split][k] <= 1 for r in got["rows"] for split in ("seen", "heldout")
               for k in ("color", "shape", "motion", "shape_early", "shape_late"))
    assert (tmp_path / "out" / "probe.md").read_text().count("\n| tiny") == 6  # a line per recipe and split
    # latent scale per channel and per latent frame: 17 frames -> 5 latent frames, z channels 16 and 8
    assert [len(r["latents"]["channel_std"]) for r in got["rows"]] == [16, 8, 8]
    assert all(len(r["latents"]["frame_std"]) == 5 and r["latents"]["channel_std_spread"] >= 1 for r in got["rows"])


def test_probe_latent_stats_separates_channels_and_frames():
    import torch

    mod = _benchmark("probe_vae_ceiling")
    z = torch.randn(64, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z[:, 1] *= 10  # one loud channel
    z[:, :, 0] *= 0.1  # a quiet first latent frame (it is in every channel, so it lowers each a little)
    got = mod.latent_stats(z)
    assert got["channel_std"][1] > 5 * max(got["channel_std"][0], got["channel_std"][2])
    assert 8 < got["channel_std_spread"] < 12
    assert got["frame_std"][0] < 0.2 * min(got["frame_std"][1:])


def test_run_text_loop_script_end_to_end_at_smoke_size(tmp_path, capsys):
    """The GPU script itself, on the CPU at smoke size, so a mistake in its reporting never costs a GPU run: it
    copies the headline files flat into --out and prints the stage times, the DiT split and the guidance table."""
    mod = _benchmark("run_text_loop")
    assert mod.main(["run", "--profile", "smoke", "--clips", "12", "--out", str(tmp_path / "out"), "--set",
                     "frames=9", "--set", "device=cpu", "--set", "eval_cfg_sweep=[2.5]", "--set", "dit_profile_steps=2",
                     "--text-path", ""]) == 0
    out = capsys.readouterr().out
    assert "| guidance | seen attribute |" in out and "\n| 2.5 |" in out and "\n| 5 |" in out
    assert "DiT stage: setup" in out and "| total |" in out
    summary = json.loads((tmp_path / "out" / "loop.json").read_text())
    assert summary["clips"] == 12 and summary["seconds"]["total_s"] >= summary["seconds"]["dit_s"]
    for name in ("results.md", "results.json", "curves.png", "profile-ops.txt", "profile-trace.json.gz"):
        assert (tmp_path / "out" / name).is_file()
    encode = summary["dit"]["encode_seconds"]  # where the setup's on-the-fly encoding went
    assert set(encode) == {"read", "decode", "resize", "vae", "text"} and all(v >= 0 for v in encode.values())
    assert 0 < sum(encode.values()) <= summary["dit"]["seconds"]["setup"] + 0.1 and "DiT setup, encoding: read" in out
    profile = json.loads((tmp_path / "out" / "profile-summary.json").read_text())  # 8 DiT steps: from step 4
    assert profile["first_step"] == 4 and profile["steps"] == 2 and "[profile] steps 4-5:" in out


def test_run_text_loop_stopped_part_way_still_returns_what_it_finished(tmp_path):
    """``timeout`` on the GPU machine sends SIGTERM: the script then still writes OUT/loop.json (stages done so far,
    their times and the VAE's steps), and a second run reuses the first one's corpus and VAE (``--corpus``,
    ``vae_run``) without training a VAE of its own."""
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_text_loop.py"), "run", "--profile", "smoke", "--clips", "8",
           "--out", str(out), "--work", str(work), "--set", "frames=9", "--set", "device=cpu", "--text-path", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    seen = []
    for line in proc.stdout:  # stop it as the DiT starts
        seen.append(line)
        if "[loop] 2/4" in line:
            break
    proc.send_signal(signal.SIGTERM)  # once: the script exits from its handler, whatever it was running
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    summary = json.loads((out / "loop.json").read_text())
    assert summary["stages_done"] == ["vae"]
    assert summary["vae"]["steps"] == 6 and summary["seconds"]["vae_s"] > 0 and "dit" not in summary
    assert summary["clips"] == 8 and summary["seconds"]["total_s"] >= summary["seconds"]["vae_s"]
    assert not (out / "results.json").exists()  # nothing that was not made is claimed

    again = tmp_path / "again"
    mod = _benchmark("run_text_loop")
    assert mod.main(["run", "--profile", "smoke", "--corpus", str(work / "corpus"), "--out", str(again), "--work",
                     str(tmp_path / "work2"), "--set", "frames=9", "--set", "device=cpu", "--set",
                     f"vae_run={work / 'loop' / 'vae'}", "--text-path", ""]) == 0
    second = json.loads((again / "loop.json").read_text())
    assert second["stages_done"] == ["vae", "dit", "eval", "report"]
    assert second["vae"]["run"] == str(work / "loop" / "vae") and second["vae"]["steps"] == 6
    assert second["clips"] == 8 and second["seconds"]["corpus_s"] == 0.0
    assert not (tmp_path / "work2" / "corpus").exists() and not (tmp_path / "work2" / "loop" / "vae").exists()


def test_run_text_loop_stops_on_sigterm_that_lands_in_a_finaliser(tmp_path):
    """The cause of "a run once ignored SIGTERM" (rc 0): a handler that raises ``SystemExit`` runs at the main
    thread's next bytecode; when that is inside a ``__del__`` the exception is printed as "Exception ignored" and
    the program goes on. run_text_loop's handler salvages and exits from inside itself instead."""
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        from run_text_loop import _stop_on
        _stop_on(signal.SIGTERM, lambda: open({str(tmp_path / "salvaged")!r}, "w").write("yes"))
        class Bar:
            def __del__(self):
                print("in __del__", flush=True)
                time.sleep(30)
        Bar()
        print("finished", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "in __del__"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "finished" not in rest, rest
    assert (tmp_path / "salvaged").read_text() == "yes"


def test_bench_loop_dit_parses_variants_and_ranks_them_against_the_first(tmp_path, capsys):
    """The DiT-size benchmark's own logic on the CPU (its timings mean nothing here): variant specs, the JSON
    written after each variant, and a table whose first row is the 1.00 reference."""
    mod = _benchmark("bench_loop_dit")
    assert mod.parse_variant("B+hidden=1024,heads=16@64:compiled") == {
        "preset": "B", "overrides": {"hidden": 1024, "heads": 16}, "batch": 64, "compiled": True}
    assert mod.parse_variant("S@128") == {"preset": "S", "overrides": {}, "batch": 128, "compiled": False}
    for bad in ("S", "S@0", "S@128:fast", "S+mlp=3@8", "S+hidden=x@8"):
        with pytest.raises(ValueError, match="variant"):
            mod.parse_variant(bad)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_loop_dit.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["tiny@2", "tiny+hidden=32,heads=2@2"]
    assert rows[1]["params"] < rows[0]["params"] and all(r["median_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("| tiny@2 |"))
    assert first.endswith("| 1.00 | 1.00 |"), first
    # a hand-made pair: twice the time per step and a 100 s compile in a 300 s budget gives a third of the steps
    ref = {"variant": "a", "params": 10, "params_m": 0.0, "batch": 1, "tokens": 100, "compiled": False,
           "warm_s": 0.0, "median_s": 0.1, "tflops": 0.0}
    other = dict(ref, variant="b", params=40, compiled=True, warm_s=100.0, median_s=0.2)
    last = mod.table([ref, other], 300.0).splitlines()[-1]
    assert last.endswith("| 1,000 | 0.33 | 1.33 |"), last
