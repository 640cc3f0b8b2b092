"""The ``tessera`` command: every subcommand is listed and has a working ``--help``."""

from __future__ import annotations

import pytest

from pipelines.cli import DELEGATED, main, parser

OWN = ["demo", "samples", "build", "filter"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in OWN + [d[0] for d in DELEGATED]:
        assert f"    {name}" in out, name


@pytest.mark.parametrize("name", OWN + [d[0] for d in DELEGATED])
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and len(out) > 200, out


def test_build_requires_input_and_output(capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["build"])
    assert exc.value.code == 2
    assert "--input" in capsys.readouterr().err
