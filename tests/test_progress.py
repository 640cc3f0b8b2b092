"""Training progress lines (``train/progress.py``): limits named in the header, loss and ETA, printed sparsely."""

from __future__ import annotations

from train.progress import Progress, limits


def test_limits_name_the_time_budget_beside_the_steps():
    assert limits(100000, 0) == "100000 steps"
    assert limits(100000, 150) == "100000 steps or 150 s, whichever comes first"


def test_progress_prints_loss_rate_and_an_eta_capped_by_the_budget(capsys):
    now = [1000.0]
    p = Progress("vae", start=0, steps=100, clock=lambda: now[0], every_s=10)
    now[0] += 5
    p(10, 0.5)  # 5 s since the start: too soon for a line
    assert p.lines == []
    now[0] += 5
    p(20, 0.25)  # 2 steps/s, 80 steps left: 40 s
    assert p.lines == ["[vae] step 20/100  loss 0.2500  2.00 steps/s  elapsed 0:10  eta 0:40"]
    p(21, 0.2, last=True)  # the last step always prints
    assert len(p.lines) == 2 and capsys.readouterr().out.count("[vae]") == 2
    budget = Progress("dit", start=0, steps=100000, budget_s=30, clock=lambda: now[0])
    now[0] += 10
    assert budget.line(20, 1.0).endswith("eta 0:20")  # the budget ends it long before the steps would
    assert Progress("x", 0, 10, enabled=False, clock=lambda: now[0]).lines == []
