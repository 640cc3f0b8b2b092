"""Bootstrap: make ``.venv`` from the tested constraints, then run Tessera or its tests inside it.

Standard library only, so it runs on a fresh machine with nothing but Python 3 and git::

    python3 -m pipelines.bootstrap demo        # the main job, end to end
    python3 -m pipelines.bootstrap test        # the test suite (extra args go to pytest)
    python3 -m pipelines.bootstrap tessera ... # any tessera subcommand

The virtualenv is re-installed only when ``pyproject.toml`` or ``.ci/constraints.txt`` change (a stamp file in
the venv records their hash). ``TESSERA_VENV`` overrides the location.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
VENV = Path(os.environ.get("TESSERA_VENV", ROOT / ".venv"))
STAMP = VENV / ".tessera-install-stamp"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _install_hash() -> str:
    h = hashlib.sha256()
    for p in (ROOT / "pyproject.toml", CONSTRAINTS):
        h.update(p.read_bytes())
    return h.hexdigest()


def ensure_venv() -> Path:
    """Create or refresh the virtualenv; return its python."""
    if sys.version_info < (3, 10):
        sys.exit(f"Tessera needs Python >= 3.10 (this is {sys.version.split()[0]})")
    want = _install_hash()
    python = _bin("python")
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return python
    if not python.exists():
        print(f"[bootstrap] creating virtualenv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("[bootstrap] installing Tessera and its pinned dependencies (first run: a few minutes)", flush=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "-q", "--upgrade", "pip", "setuptools", "wheel"], check=True)
    # torch first, alone: pinned to the CPU build so nothing later can pull CUDA wheels in.
    subprocess.run(pip + ["install", "-q", "-c", str(CONSTRAINTS), "torch", "torchvision"], check=True)
    subprocess.run(pip + ["install", "-q", "-c", str(CONSTRAINTS), "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)
    return python


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    python = ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cmd == "test":
        return subprocess.run([str(python), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
    if cmd == "tessera":
        return subprocess.run([str(_bin("tessera")), *rest], env=env).returncode
    return subprocess.run([str(_bin("tessera")), cmd, *rest], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
