"""Checkpoints: round trip (weights, optimizer, RNG), atomicity, keep-last-k, no pickles."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from model.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from model.ema import EMA

torch.set_num_threads(1)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = net(torch.randn(5, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_round_trip_continues_identically(tmp_path) -> None:
    net = _net(0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    ema = EMA(net, 0.9)
    _train(net, opt, 3, seed=1)
    ema.update(net)
    path = save_checkpoint(tmp_path, 3, {"net": net, "ema": ema.module}, {"net": opt}, extra={"note": "x"})
    assert path == checkpoint_path(tmp_path, 3)
    rng_after_save = torch.rand(3)

    net2 = _net(42)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1.0)
    ema2 = EMA(net2, 0.9)
    meta = load_checkpoint(path, {"net": net2, "ema": ema2.module}, {"net": opt2})
    assert meta["step"] == 3 and meta["extra"] == {"note": "x"}
    assert torch.equal(torch.rand(3), rng_after_save)  # RNG restored to the saved state
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == 1e-2 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.95)
    # continuing both gives bit-identical weights (Adam moments and step counts were restored)
    _train(net, opt, 2, seed=9)
    _train(net2, opt2, 2, seed=9)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_only_safetensors_and_json(tmp_path) -> None:
    net = _net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, opt, 1, seed=0)
    path = save_checkpoint(tmp_path, 1, {"net": net}, {"net": opt})
    names = sorted(p.name for p in path.iterdir())
    assert names == ["meta.json", "net.safetensors", "optim-net.safetensors", "rng.safetensors"]
    json.loads((path / "meta.json").read_text())


def test_keep_last_and_latest(tmp_path) -> None:
    net = _net(0)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"net": net}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000030", "step-000000040"]
    assert latest_checkpoint(tmp_path).name == "step-000000040"
    # an incomplete folder (no meta.json) and a leftover temp folder are never picked
    (tmp_path / "step-000000050").mkdir()
    (tmp_path / ".tmp-step-000000060-abcd").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000000040"
    assert latest_checkpoint(tmp_path / "missing") is None


class _Broken(nn.Module):
    def state_dict(self, *args, **kwargs):  # noqa: D102
        raise RuntimeError("disk full")


def test_failed_save_leaves_nothing(tmp_path) -> None:
    save_checkpoint(tmp_path, 1, {"net": _net(0)})
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"net": _net(0), "bad": _Broken()})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001"]
    assert latest_checkpoint(tmp_path).name == "step-000000001"


def test_strict_load_rejects_wrong_module(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 1, {"net": _net(0)})
    with pytest.raises(RuntimeError):
        load_checkpoint(path, {"net": nn.Linear(4, 2)})


def test_ema_warms_its_decay_up_by_step() -> None:
    """d = min(decay, (1 + step) / (10 + step)): the first updates follow the model closely, so a short run's
    average is not its initial weights; without a step the plain decay applies."""
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(10**6) == 0.999 and ema.decay_at(None) == 0.999
    with torch.no_grad():
        ema.module.weight.fill_(0.0)
        net.weight.fill_(1.0)
    ema.update(net, step=0)
    assert float(ema.module.weight) == pytest.approx(0.9)  # 0.1 * 0 + 0.9 * 1
    ema.update(net)  # plain decay
    assert float(ema.module.weight) == pytest.approx(0.9 + 0.001 * 0.1)


def test_ema_update_matches_a_per_parameter_lerp_also_across_dtypes() -> None:
    net = _net(0)
    ema = EMA(net, 0.9)
    ema.module.half()  # a lower-precision average: the parameters are cast before the lerp
    reference = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=50)
    d = ema.decay_at(50)
    for name, p in net.named_parameters():
        want = reference[name].lerp(p.detach().half(), 1 - d)
        assert torch.equal(ema.module.state_dict()[name], want), name
    same = EMA(net, 0.9)  # same dtype: bit-identical to lerp_ on the CPU
    before = {k: v.clone() for k, v in same.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-2.0)
    same.update(net, step=3)
    for name, p in net.named_parameters():
        assert torch.equal(same.module.state_dict()[name], before[name].lerp(p.detach(), 1 - same.decay_at(3))), name
