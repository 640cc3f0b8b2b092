"""One argparse parser per config dataclass: every field is a kebab-case ``--flag`` with the field's default and its
help text, both read from the dataclass's source (its default expression and its comment), so a field is
documented in one place and ``--help`` needs no import of the module (no torch: it prints in well under a second).

- a comment on a field's line documents it, and comment-only lines right after it continue that comment;
- comment-only lines before a field (that does not follow a commented one) document that field;
- a one-to-three-word comment line (``# data``, ``# optimisation``) starts a group of options in ``--help``
  (unless it finishes a line that ends in ``,;:(-``).

Booleans take ``true``/``false``; tuples take JSON (``--resolutions '[[256, 256]]'``); ``None`` defaults take a
string. The old snake_case spellings (``--data_root``) still work, with a deprecation note on stderr. The training
scripts, ``tessera vae-eval`` and ``python -m train.train_vae`` all parse through here, so their flags behave the
same.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import tokenize
from pathlib import Path

# Documentation of fields whose dataclass line has no comment of its own. A field documented in its source is
# never documented here.
COMMON_DOCS = {
    "data_root": "dataset folder (a build's or caption's output: clips/*.parquet + _manifest.json)",
    "run_dir": "run folder: checkpoints/, tb/ (TensorBoard), previews or samples",
    "out_dir": "folder for the results table and summary.json",
    "preset": "model size (the presets in model/)",
    "seed": "random seed (same seed, same run)",
    "steps": "training steps",
    "lr": "peak learning rate (AdamW)",
    "betas": "AdamW betas",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear learning-rate warm-up steps",
    "grad_clip": "gradient norm clip",
    "ema_decay": "decay of the weights' exponential moving average (the EMA weights are exported)",
    "log_every": "steps between TensorBoard scalars",
    "ckpt_every": "steps between checkpoints (and at the last step)",
    "keep_last": "checkpoints kept",
    "resume": "continue from the newest checkpoint in --run-dir",
    "max_batch": "largest batch",
    "num_workers": "data loader worker processes",
    "holdout_pct": "share of clips (by clip id hash, %) held out of training",
    "image_prob": "share of batches that are single frames (images)",
    "text_max_length": "text encoder tokens per caption",
    "caption_mix": "caption kinds and their sampling weights, JSON [[kind, weight], ...]",
    "bucket_frames": "frame counts of the on-the-fly buckets",
    "resolutions": "training sizes, JSON [[height, width], ...]; each batch draws one",
    "num_frames": "frames per training clip, JSON [n, ...] (each 1 + 4k)",
    "kl_weight": "weight of the latent KL term",
    "lpips_weight": "weight of the perceptual loss (with --lpips-path)",
    "disc_start": "step at which the discriminator (--disc-weight > 0) starts",
    "disc_lr": "discriminator learning rate",
    "disc_channels": "discriminator width",
    "preview_every": "steps between input/reconstruction previews (and at the last step)",
    "depth": "model depth (blocks); 0: the preset's",
    "heads": "attention heads; 0: the preset's",
    "sample_prompts": "prompts of the training samples",
    "patch": "latent voxels per DiT token (t, h, w)",
    "caption_dropout": "share of training captions dropped (classifier-free guidance)",
    "logit_mean": "mean of the logit-normal training-time distribution",
    "logit_std": "std of the logit-normal training-time distribution",
    "shift": "shift training times by the token count (model.flow.shift_factor)",
    "profile_from": "first step of the --profile-steps window",
    "sample_seeds": "seeds of the training samples",
    "sample_frames": "frames of the training samples",
    "sample_steps": "sampling steps of the training samples",
    "sample_cfg": "guidance scale of the training samples",
    "sample_fps": "fps of the training sample videos",
    "split": "heldout | all: which clips to score",
    "max_clips": "clips scored at most",
    "height": "clip height (px) for scoring",
    "width": "clip width (px) for scoring",
    "chunk_frames": "frames per chunk in the chunked encode",
    "chunk_latents": "latent frames per chunk in the chunked decode",
    "tile_overlap": "overlap (px) of spatial tiles",
    "lpips_path": "local LPIPS weights (empty: no LPIPS column)",
    "checkpoint": "VAE checkpoint (a step-* folder or a checkpoints/ folder)",
}


NOT_A_FLAG = object()  # the default of a field whose default expression needs the module (a factory, a name)


@dataclasses.dataclass(frozen=True)
class SourceField:
    name: str
    default: object  # the evaluated default expression; dataclasses.MISSING when there is none
    annotation: str
    doc: str
    group: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """``{line: (comment text, whether the line holds only the comment)}``."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[: tok.start[1]].strip()
            out[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    return out


def source_fields(path: str | Path, class_name: str) -> list[SourceField]:
    """The fields of the dataclass ``class_name`` in the file ``path``, read without importing it."""
    source = Path(path).read_text()
    cls = next((n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        raise LookupError(f"{path} defines no class {class_name}")
    comments = _comments(source)
    nodes = [n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    fields, group, prev_end, prev_commented = [], "", cls.lineno, False
    for node in nodes:
        block = [comments[i][0] for i in range(prev_end + 1, node.lineno) if i in comments and comments[i][1]]
        leading = []
        before = block[-2] if len(block) > 1 else fields[-1].doc if prev_commented and fields else ""
        unfinished = before.rstrip()[-1:] in tuple(",;:(-")
        if block and len(block[-1].split()) <= 3 and not unfinished:  # a group header
            group, block = block[-1], block[:-1]
        if block and prev_commented and fields:  # continues the previous field's comment
            fields[-1] = dataclasses.replace(fields[-1], doc=" ".join([fields[-1].doc, *block]))
        else:
            leading = block
        own = [comments[i][0] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
        if node.value is None:
            default = dataclasses.MISSING
        else:  # a literal or arithmetic on literals; anything else (field(default_factory=...)) is not a flag
            try:
                code = compile(ast.Expression(node.value), str(path), "eval")
                default = eval(code, {"__builtins__": {}})  # noqa: S307 - the repository's own source
            except Exception:  # noqa: BLE001 - a name or call: evaluated only by importing the module
                default = NOT_A_FLAG
        doc = " ".join(leading + own) or COMMON_DOCS.get(node.target.id, "")
        fields.append(SourceField(node.target.id, default, ast.unparse(node.annotation), doc, group))
        prev_end, prev_commented = node.end_lineno, bool(own)
    return fields


def _to_tuple(v):
    return tuple(_to_tuple(i) for i in v) if isinstance(v, list) else v


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _json_tuple(s: str):
    try:
        return _to_tuple(json.loads(s))
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected JSON, e.g. '[256, 256]', got {s!r}") from None


def _shown(default) -> str:
    if isinstance(default, tuple):
        return json.dumps(default)
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default) if isinstance(default, str) else str(default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and the example's line breaks; adds "(default: X)" where the help does not already
    name a default and the default says something (not None, not a False switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, "", [], argparse.SUPPRESS) or action.option_strings == []
                or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})".strip()


def kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def undeprecate(argv: list[str], flags: set[str], prog: str) -> list[str]:
    """Old ``--snake_case`` spellings of ``flags`` (kebab-case) rewritten, each with a note on stderr."""
    out = []
    for arg in argv:
        head, sep, tail = arg.partition("=")
        if head.startswith("--") and "_" in head and head.replace("_", "-") in flags:
            print(f"{prog}: note: {head} is deprecated, use {head.replace('_', '-')}", file=sys.stderr)
            arg = head.replace("_", "-") + sep + tail
        out.append(arg)
    return out


def config_parser(fields: list[SourceField], *, prog: str, description: str, example: str = ""
                  ) -> argparse.ArgumentParser:
    epilog = f"example:\n  {example}" if example else None
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields:
        if f.default is NOT_A_FLAG:
            continue
        target = groups.setdefault(f.group, p.add_argument_group(f.group)) if f.group else p
        default = f.default
        if isinstance(default, bool):
            kind, metavar = _bool, "{true,false}"
        elif isinstance(default, tuple):
            kind, metavar = _json_tuple, "JSON"
        elif default is None or default is dataclasses.MISSING:
            kind, metavar = str, None
        else:
            kind, metavar = type(default), None
        target.add_argument(kebab(f.name), dest=f.name, type=kind, metavar=metavar, help=f.doc.replace("%", "%%"),
                            default=None if default is dataclasses.MISSING else default,
                            required=default is dataclasses.MISSING)
    return p


def parse_source_config(path: str | Path, class_name: str, argv: list[str] | None, *, prog: str, description: str,
                        example: str = "") -> dict:
    """Parse ``argv`` against the dataclass ``class_name`` of the file ``path`` (not imported): ``{field: value}``."""
    fields = source_fields(path, class_name)
    p = config_parser(fields, prog=prog, description=description, example=example)
    argv = list(sys.argv[1:] if argv is None else argv)
    return vars(p.parse_args(undeprecate(argv, {kebab(f.name) for f in fields}, prog)))


def parse_config(cls, argv: list[str] | None, *, prog: str, description: str, example: str = ""):
    """Parse ``argv`` into an instance of the frozen dataclass ``cls`` (fields and docs from its source)."""
    values = parse_source_config(inspect.getsourcefile(cls), cls.__name__, argv, prog=prog,
                                 description=description, example=example)
    return cls(**values)
