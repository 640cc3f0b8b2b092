"""Atomic, code-free checkpoints: safetensors for tensors, JSON for everything else.

Layout of one checkpoint (``DIR/step-000001234/``)::

    {name}.safetensors          one per module (its state_dict)
    optim-{name}.safetensors    tensors of one optimizer's state, keyed "state.{param_index}.{key}"
    rng.safetensors             torch CPU (and CUDA) generator states of the saving process
    meta.json                   step, extra (config, data position, ...), optimizer param_groups and
                                non-tensor state, python / numpy RNG states; written last

``load_vae`` is the one way to get a frozen VAE from any folder that holds one (a ``step-*`` checkpoint, its
parent, a run folder, or an exported pipeline); ``read_weights`` / ``load_weights`` turn a missing, truncated
or mismatched weights file into one ``WeightsError`` line instead of a library traceback.

A checkpoint is written into a hidden temporary folder beside it, flushed, and renamed into place, so a
``step-*`` folder either is complete or does not exist; ``latest_checkpoint`` also requires ``meta.json``.
After a save, all but the newest ``keep_last`` are deleted (keep at least 2 in long jobs: the newest may be
mid-write when a job dies, although the rename makes that harmless). Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

_STEP_RE = re.compile(r"^step-(\d{9})$")


# ---------------------------------------------------------------------------------------------------------
#   Optimizer and RNG state <-> (tensors, JSON)
# ---------------------------------------------------------------------------------------------------------


def _optimizer_to_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def _optimizer_from_parts(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, plain in meta["plain_state"].items():
        state.setdefault(int(idx), {}).update(plain)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
#   Public API
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``final`` to write into; when the block ends without error it is flushed
    and renamed to ``final`` (replacing an older one), else removed. A reader sees the whole folder or none."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume), re-exporting: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if _STEP_RE.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra: dict | None = None,
    keep_last: int = 3,
    save_rng: bool = True,
) -> Path:
    """Write ``DIR/step-{step:09d}`` atomically and prune to the newest ``keep_last``; returns its path.

    ``extra`` must be JSON-serialisable (config, data-loader position, metrics). Call on one rank only.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_folder(checkpoint_path(directory, step)) as tmp:
        for name, module in modules.items():
            save_file(_state_dict_cpu(module), str(tmp / f"{name}.safetensors"))
        optim_meta = {}
        for name, opt in (optimizers or {}).items():
            tensors, meta = _optimizer_to_parts(opt)
            save_file(tensors, str(tmp / f"optim-{name}.safetensors"))
            optim_meta[name] = meta
        rng_meta = None
        if save_rng:
            rng_tensors, rng_meta = _rng_parts()
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
        meta = {
            "format": "tessera-checkpoint/1",
            "step": int(step),
            "modules": sorted(modules),
            "optimizers": optim_meta,
            "rng": rng_meta,
            "extra": extra or {},
        }
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return checkpoint_path(directory, step)


def load_checkpoint(
    path: str | Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> dict:
    """Load a checkpoint folder into ``modules`` / ``optimizers`` (in place); returns ``meta.json``'s dict
    (``step``, ``extra``, ...). Modules load on their own device. Missing optimizer files raise."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    for name, module in modules.items():
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        state = load_file(str(path / f"{name}.safetensors"), device=str(device))
        module.load_state_dict(state, strict=strict)
    for name, opt in (optimizers or {}).items():
        tensors = load_file(str(path / f"optim-{name}.safetensors"))
        _optimizer_from_parts(opt, tensors, meta["optimizers"][name])
    if restore_rng and meta.get("rng") is not None:
        _restore_rng(load_file(str(path / "rng.safetensors")), meta["rng"])
    return meta


# ---------------------------------------------------------------------------------------------------------
#   Weights files and the one VAE loader
# ---------------------------------------------------------------------------------------------------------


class WeightsError(ValueError):
    """A weights file that is missing, unreadable (truncated, not safetensors) or does not fit its model."""


def config_from_dict(cls, d: dict):
    """A config dataclass from its JSON dict (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ``WeightsError`` (one line) when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"missing weights file {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error class (or OSError) for a bad file
        raise WeightsError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """``module`` with the weights of ``path`` (on the module's device); ``WeightsError`` when they do not fit."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    state = read_weights(path, device)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit the {type(module).__name__} its config describes: "
                           f"{str(exc).splitlines()[0]}") from None
    return module


def vae_weights_path(path: str | Path, weights: str = "ema") -> Path:
    """The VAE weights file of a folder: ``vae.safetensors`` of a pipeline folder, else ``{weights}.safetensors``
    (``vae`` when that file is missing) of the checkpoint ``path`` or the newest under it (or its
    ``checkpoints/``)."""
    path = Path(path)
    if (path / "pipeline.json").is_file():
        return path / "vae.safetensors"
    if not (path / "meta.json").is_file():
        found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"no VAE checkpoint (meta.json) or pipeline.json under {path}")
        path = found
    return path / f"{weights}.safetensors" if (path / f"{weights}.safetensors").is_file() else path / "vae.safetensors"


def load_vae(path: str | Path, device: str | torch.device = "cpu", weights: str = "ema", preset: str = ""):
    """A frozen ``VideoVAE`` from a pipeline folder (``pipeline.json`` + ``vae.safetensors``) or a ``train_vae``
    checkpoint (``vae_weights_path``; EMA weights preferred). Its architecture is the folder's (``pipeline.json``,
    the checkpoint's ``vae_config`` or its config's preset) unless ``preset`` names one. Safetensors only."""
    from model.vae import VAEConfig, VideoVAE, build_vae

    file = vae_weights_path(path, weights)
    if (file.parent / "pipeline.json").is_file():
        vae = VideoVAE(config_from_dict(VAEConfig, json.loads((file.parent / "pipeline.json").read_text())["vae"]))
    else:
        extra = json.loads((file.parent / "meta.json").read_text()).get("extra", {})
        if not preset and "vae_config" in extra:
            vae = VideoVAE(config_from_dict(VAEConfig, extra["vae_config"]))
        else:
            vae = build_vae(preset or extra.get("config", {}).get("preset", "base"))
    return load_weights(vae.to(device), file).eval().requires_grad_(False)
