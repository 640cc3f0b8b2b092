"""The pipeline folder and object (``model/pipeline.py``): what ``pipeline.json`` says a request defaults to,
devices, a corrupt weights file, and prompt expansion only through an expander the caller passes in.
Generation itself (every task, the sampler) is tested in tests/test_generate.py."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers import export_tiny_pipeline
from model.checkpoint import WeightsError
from model.pipeline import (
    DEFAULTS, TextToVideo, export_pipeline, read_pipeline_config, request_units, resolve_device, trained_defaults,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_tiny_pipeline(tmp_path_factory.mktemp("p") / "pipeline", text_length=16, nudge=0)


def test_trained_defaults_read_the_loop_keys_then_the_training_config():
    assert trained_defaults({"extra": {"train_size": 64, "train_frames": 9}}) == {"size": (64, 64), "frames": 9}
    train_config = {"train": {"sample_size": [96, 64], "sample_frames": 13}}
    assert trained_defaults({"extra": {"train_config": train_config}}) == {"size": (96, 64), "frames": 13}
    # the loop's train_size wins over the sample size train_dit recorded
    assert trained_defaults({"extra": {"train_size": 32, "train_config": train_config}})["size"] == (32, 32)
    assert trained_defaults({"extra": {}}) == {} and trained_defaults({}) == {}


def test_exported_folder_records_the_training_config_it_is_given(folder, tmp_path):
    meta = read_pipeline_config(folder)
    assert trained_defaults(meta) == {}  # nothing recorded: the CLI falls back to DEFAULTS
    assert DEFAULTS.size == (256, 256) and DEFAULTS.frames == 17
    pipe = TextToVideo.from_pretrained(folder)
    again = export_pipeline(tmp_path / "again", pipe.dit, pipe.vae, pipe.text_cfg,
                            extra={"train_config": {"train": {"sample_size": [48, 32], "sample_frames": 5}}})
    assert trained_defaults(read_pipeline_config(again)) == {"size": (48, 32), "frames": 5}
    assert request_units(pipe.vae.cfg, pipe.dit.cfg) == (4, 16, 1)  # 4 frames per latent, 8 px x patch 2


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


@pytest.mark.parametrize("name", ["dit", "vae"])
def test_a_truncated_or_missing_weights_file_is_one_weights_error(folder, tmp_path, name):
    broken = shutil.copytree(folder, tmp_path / "broken")
    weights = broken / f"{name}.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WeightsError, match=f"{name}.safetensors is not a readable safetensors file"):
        TextToVideo.from_pretrained(broken)
    weights.unlink()
    with pytest.raises(WeightsError, match="missing weights file"):
        TextToVideo.from_pretrained(broken)


def test_expansion_needs_an_expander_passed_in(folder):
    plain = TextToVideo.from_pretrained(folder)
    with pytest.raises(ValueError, match="needs a prompt expander"):
        plain.sample_latents("a cat", frames=1, size=(16, 16), steps=1, expand=True)
    seen = []
    pipe = TextToVideo.from_pretrained(folder, expander=lambda p: seen.append(p) or p + ", in detail")
    pipe.sample_latents("a cat", frames=1, size=(16, 16), steps=1, expand=True)
    assert seen == ["a cat"]
