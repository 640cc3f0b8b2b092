"""The ``tessera`` command explains itself: every subcommand is listed, documents every option with its default,
ends its help with an example, answers ``--help`` without importing torch (where its module allows), accepts the
old snake_case flags with a note, takes its defaults from the config dataclasses, and reports a user's error in one
line."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.cli import DELEGATED, EXAMPLES, main, parser
from train.config_cli import parse_source_config, source_fields

ROOT = Path(__file__).resolve().parents[1]
OWN = ["demo", "samples", "build", "filter"]
ALL = OWN + [d[0] for d in DELEGATED]
# cache-latents imports torch at module level (its config holds model.buckets / model.text configs), so its
# --help still pays for it
TORCH_AT_IMPORT = {"cache-latents"}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert f"    {name}" in out, name


@pytest.mark.parametrize("name", sorted(set(ALL) - TORCH_AT_IMPORT))
def test_subcommand_help_documents_every_option_and_ends_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and f"example:\n  tessera {name} " in out, out
    assert EXAMPLES[name] in " ".join(out.split())  # the whole example, however argparse wraps it
    if name in OWN or name in ("train-vae", "train-dit", "vae-eval"):  # the parsers built here
        assert not re.search(r"\(default: [^)]*\)\s*\(default:", out), out
    if name in ("train-vae", "train-dit", "vae-eval"):  # generated from the config: every flag has its text
        options = re.split(r"\n  (?=--)", out.split("options:", 1)[1].split("example:", 1)[0])[1:]
        assert options and all(len(o.split(None, 1)) == 2 and len(o.split()) > 2 for o in options), options
        assert "--data-root" in out and "--data_root" not in out


def test_help_of_every_light_subcommand_imports_no_torch():
    names = sorted(set(ALL) - TORCH_AT_IMPORT)
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from pipelines.cli import main
        for name in {names!r}:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main([name, "--help"])
                except SystemExit:
                    pass
        print(sorted(m for m in ("torch", "ray", "cv2", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_snake_case_flags_still_work_with_a_deprecation_note(capsys):
    values = parse_source_config(ROOT / "train" / "train_vae.py", "TrainVAEConfig",
                                 ["--data_root", "d", "--batch_size=3", "--run-dir", "r", "--resume", "false",
                                  "--resolutions", "[[64, 48]]"], prog="tessera train-vae", description="")
    assert values["data_root"] == "d" and values["batch_size"] == 3 and values["run_dir"] == "r"
    assert values["resume"] is False and values["resolutions"] == ((64, 48),)
    err = capsys.readouterr().err
    assert "--data_root is deprecated, use --data-root" in err and "--batch_size is deprecated" in err
    assert "--run-dir" not in err
    with pytest.raises(SystemExit):
        parse_source_config(ROOT / "train" / "train_vae.py", "TrainVAEConfig", ["--resume", "maybe"],
                            prog="tessera train-vae", description="")


def test_generated_parsers_default_to_the_dataclass():
    from train.train_vae import TrainVAEConfig, parse_args

    assert parse_args([]) == TrainVAEConfig()
    assert parse_args(["--steps", "7", "--num-frames", "[9]"]) == dataclasses.replace(TrainVAEConfig(), steps=7,
                                                                                   num_frames=(9,))


def test_field_docs_come_from_the_source_comments(tmp_path):
    src = tmp_path / "conf.py"
    src.write_text(textwrap.dedent("""
        from dataclasses import dataclass, field

        @dataclass
        class C:
            # data
            root: str = ""  # where the clips are,
            # read recursively
            size: tuple[int, int] = (8 * 8, 2)
            # the learning rate of the run,
            # peak value
            lr: float = 1e-3
            # systems
            seed: int = 0
            extra: list = field(default_factory=list)
    """))
    fields = {f.name: f for f in source_fields(src, "C")}
    assert fields["root"].doc == "where the clips are, read recursively" and fields["root"].group == "data"
    assert fields["size"].default == (64, 2) and fields["size"].doc == ""
    assert fields["lr"].doc == "the learning rate of the run, peak value" and fields["lr"].group == "data"
    assert fields["seed"].group == "systems" and fields["seed"].doc == "random seed (same seed, same run)"
    values = parse_source_config(src, "C", ["--lr", "0.5"], prog="x", description="")
    assert values == {"root": "", "size": (64, 2), "lr": 0.5, "seed": 0}  # a factory field is not a flag


def test_build_takes_its_defaults_from_the_config():
    from curate.clips import ClipConfig
    from pipelines.build import BuildConfig
    from pipelines.cli import build_config_from_args

    cfg = build_config_from_args(parser().parse_args(["build", "--input", "v", "--output", "o"]))
    assert cfg == BuildConfig(input="v", output="o")
    assert cfg.clips == ClipConfig()
    cfg = build_config_from_args(parser().parse_args(["build", "-i", "v", "-o", "o", "--min-clip-s", "3"]))
    assert cfg.clips.min_s == 3.0 and cfg.clips.max_s == ClipConfig().max_s


def test_build_help_names_where_a_default_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: env)" not in out and "(default: None)" not in out
    assert "(default: $TESSERA_LLM_BASE_URL, else $OPENAI_BASE_URL, else OpenAI's public API)" in out


def test_build_requires_input_and_output(capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["build"])
    assert exc.value.code == 2
    assert "--input" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["filter", "{missing}"], ["report", "{missing}"]])
def test_a_missing_dataset_is_one_line_and_status_2(argv, tmp_path, capsys):
    missing = str(tmp_path / "no-such-dataset")
    assert main([a.format(missing=missing) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"tessera {argv[0]}: error:") and missing in err, err


@pytest.mark.parametrize("command", ["filter", "report"])
def test_a_shard_that_no_longer_matches_its_manifest_is_one_line_and_status_2(command, tmp_path, capsys):
    """A dataset whose shard was cut short after publish: the readers' manifest check refuses it, and the CLI says
    so in one line (no traceback)."""
    import pyarrow as pa

    from curate.store import atomic_write_table, write_manifest

    shard = tmp_path / "clips" / "part-00000.parquet"
    atomic_write_table(shard, pa.table({"clip_id": ["a", "b"]}))
    write_manifest(tmp_path, [shard])
    shard.write_bytes(shard.read_bytes()[:-7])
    argv = [command, str(tmp_path)] + (["--out", str(tmp_path / "report")] if command == "report" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"tessera {command}: error:") and "bytes" in err, err


def test_generate_help_needs_no_torch_and_shows_the_pipeline_defaults():
    """generate reads model.pipeline.Defaults from its source for --help: the same values as the import, and no
    torch in a fresh interpreter that only builds the help."""
    from model.pipeline import DEFAULTS
    from pipelines.generate import DEFAULTS as CLI_DEFAULTS

    assert vars(CLI_DEFAULTS) == dataclasses.asdict(DEFAULTS)
    code = ("import sys\nfrom pipelines.generate import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False") and f"else {DEFAULTS.frames})" in " ".join(out.split())
