"""ensure_torchvision() makes torchvision-dependent imports work (see curate/compat.py)."""

import subprocess
import sys
from pathlib import Path

# A fresh interpreter: in this one, another test may already have imported torchvision (or failed to).
CODE = "from curate.compat import ensure_torchvision as e; e(); e(); import open_clip, torchvision; print('ok')"


def test_open_clip_imports_after_ensure_torchvision():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
