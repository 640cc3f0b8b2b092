"""Near-duplicate detection: pHash robustness, grouping rules, brute-force agreement and scale."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest

from curate.dedup import (
    SIG_FRAMES,
    SIG_SIDE,
    DedupThresholds,
    dedup_methods,
    find_duplicates,
    hamming,
    phash_frames,
    sequence_distance,
    sequence_signature,
)

# ---------------------------------------------------------------------------------------------- helpers


def clip_frames(seed: int, k: int = 6, h: int = 160, w: int = 284) -> np.ndarray:
    """A synthetic clip: a smooth random scene panning slowly, uint8 (k, h, w, 3)."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (h + 40, w + 80, 3), dtype=np.uint8), (0, 0), 6.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    return np.stack([big[10 : 10 + h, 4 * i : 4 * i + w] for i in range(k)])


def reencode(frames: np.ndarray, crf: int = 35) -> np.ndarray:
    """Round-trip frames through H.264 (libx264, low quality) in memory: a re-encoded copy."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": str(crf)}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    buf.seek(0)
    with av.open(buf) as inp:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in inp.decode(video=0)])


def brighten(frames: np.ndarray, delta: int) -> np.ndarray:
    return np.clip(frames.astype(np.int16) + delta, 0, 255).astype(np.uint8)


def brute_force(ids, emb, hashes, th: DedupThresholds, quality=None) -> dict:
    """The same rule with plain loops: every pair compared, leaders taken in priority order."""
    n = len(ids)
    unit = [None if e is None else np.asarray(e) / np.linalg.norm(e) for e in emb] if emb is not None else [None] * n
    hs = hashes if hashes is not None else [None] * n

    def similar(i, j):
        if unit[i] is not None and unit[j] is not None:
            return float(unit[i] @ unit[j]) >= th.cosine
        return hs[i] is not None and hs[j] is not None and hamming(hs[i], hs[j]) <= th.hamming

    def key(i):
        q = None if quality is None else quality[i]
        return (q is None, -(q or 0.0), ids[i])

    rep = {}
    for i in sorted(range(n), key=key):
        if i in rep:
            continue
        rep[i] = i
        for j in range(n):
            if j not in rep and similar(i, j):
                rep[j] = i
    return {ids[i]: (None if rep[i] == i else ids[rep[i]]) for i in range(n)}


# ---------------------------------------------------------------------------------------------- pHash


def test_phash_format_and_identity():
    f = clip_frames(0)
    h = phash_frames(f)
    assert len(h) == 16 and int(h, 16) >= 0
    assert phash_frames(f.copy()) == h


def test_phash_near_copies_close_and_other_content_far():
    f = clip_frames(0)
    h = phash_frames(f)
    assert hamming(h, phash_frames(reencode(f))) <= 4
    assert hamming(h, phash_frames(brighten(f, 40))) <= 4
    assert hamming(h, phash_frames(f[1:])) <= 6  # cut one sample later
    others = [hamming(h, phash_frames(clip_frames(s))) for s in range(1, 9)]
    assert min(others) > DedupThresholds().hamming


def test_phash_on_real_video(shared_data):
    with av.open(str(shared_data / "pyscenedetect" / "testvideo.mp4")) as c:
        frames = [
            cv2.resize(fr.to_ndarray(format="rgb24"), (284, 160), interpolation=cv2.INTER_AREA)
            for i, fr in zip(range(200), c.decode(video=0))
        ]
    shot_a, shot_b = np.stack(frames[40:160:20]), np.stack(frames[185:200:3])  # two shots (cut at 180)
    ha = phash_frames(shot_a)
    assert hamming(ha, phash_frames(reencode(shot_a, crf=40))) <= 4
    assert hamming(ha, phash_frames(brighten(shot_a, -30))) <= 6
    assert hamming(ha, phash_frames(shot_b)) > DedupThresholds().hamming


# ---------------------------------------------------------------------------------------------- grouping


def test_duplicates_by_hash():
    base = clip_frames(0)
    clips = {
        "a": base, "b": base.copy(), "c": reencode(base), "d": brighten(base, 30),
        "e": clip_frames(1), "f": clip_frames(2),
    }  # fmt: skip
    ids = list(clips)
    res = find_duplicates(ids, phashes=[phash_frames(v) for v in clips.values()])
    assert res == {"a": None, "b": "a", "c": "a", "d": "a", "e": None, "f": None}


def test_quality_picks_the_representative_and_order_does_not_matter():
    base = clip_frames(0)
    ids = ["z", "a", "m"]
    hashes = [phash_frames(base)] * 3
    assert find_duplicates(ids, phashes=hashes, quality=[0.1, 0.5, 0.9]) == {"z": "m", "a": "m", "m": None}
    assert find_duplicates(ids, phashes=hashes) == {"z": "a", "a": None, "m": "a"}
    assert find_duplicates(ids[::-1], phashes=hashes) == {"z": "a", "a": None, "m": "a"}


def test_embeddings_decide_when_both_present_else_hash():
    rng = np.random.default_rng(0)
    e0 = rng.normal(size=32)
    far = rng.normal(size=32)
    h_same = phash_frames(clip_frames(0))
    ids = ["a", "b", "c", "d"]
    emb = [e0, far, None, e0 + 0.01 * rng.normal(size=32)]
    hashes = [h_same, h_same, h_same, phash_frames(clip_frames(5))]
    res = find_duplicates(ids, embeddings=emb, phashes=hashes)
    # a-b: both embedded and far apart -> not duplicates despite equal hashes; a-c: c lacks an embedding, same
    # hash -> duplicate; a-d: embeddings nearly equal -> duplicate despite different hashes
    assert res == {"a": None, "b": None, "c": "a", "d": "a"}
    assert dedup_methods(emb, 4) == ["clip-embedding", "clip-embedding", "phash", "clip-embedding"]


def test_no_chaining_through_a_middle_clip():
    """a~b and b~c but not a~c: c is not folded into a's group through b."""
    ids = ["a", "b", "c"]
    emb = [[1.0, 0.0], [np.cos(0.25), np.sin(0.25)], [np.cos(0.5), np.sin(0.5)]]
    res = find_duplicates(ids, embeddings=emb, threshold=DedupThresholds(cosine=float(np.cos(0.3))))
    assert res == {"a": None, "b": "a", "c": None}


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 16])  # 16: one-row blocks, exercises block offsets
def test_matches_brute_force_on_a_small_mixed_set(chunk_bytes):
    rng = np.random.default_rng(3)
    n = 240
    emb = rng.normal(size=(n, 16))
    emb[1::4] = emb[0::4] + 0.15 * rng.normal(size=emb[1::4].shape)  # near copies
    emb_list = [None if i % 5 == 0 else emb[i] for i in range(n)]
    base = rng.integers(0, 2**63, size=n // 3, dtype=np.int64)
    codes = []
    for i in range(n):  # clusters of related hashes: flip 0-12 random bits of a shared base
        c = int(base[i % len(base)])
        for b in rng.choice(64, size=rng.integers(0, 13), replace=False):
            c ^= 1 << int(b)
        codes.append(f"{c:016x}")
    quality = [None if i % 7 == 0 else float(rng.random()) for i in range(n)]
    ids = [f"clip{i:04d}" for i in range(n)]
    th = DedupThresholds(cosine=0.97, hamming=6, chunk_bytes=chunk_bytes)
    got = find_duplicates(ids, embeddings=emb_list, phashes=codes, threshold=th, quality=quality)
    want = brute_force(ids, emb_list, codes, th, quality)
    assert got == want
    assert sum(v is not None for v in want.values()) > 20  # the set really has duplicates of both kinds


@pytest.mark.parametrize("t", [1, 4, 7, 8, 12])
def test_hash_blocking_misses_no_pair_at_the_threshold(t):
    """Pairs exactly ``t`` bits apart, the flips spread over the whole hash (worst case for band blocking)."""
    rng = np.random.default_rng(t)
    ids, hashes = [], []
    for p in range(64):
        a = int(rng.integers(0, 2**63)) | (int(rng.integers(0, 2)) << 63)
        b = a
        for k in range(t):
            b ^= 1 << int((p + k * 64 // t) % 64)
        ids += [f"p{p:02d}a", f"p{p:02d}b"]
        hashes += [f"{a:016x}", f"{b:016x}"]
    res = find_duplicates(ids, phashes=hashes, threshold=DedupThresholds(hamming=t))
    assert all(res[f"p{p:02d}b"] == f"p{p:02d}a" for p in range(64))
    res = find_duplicates(ids, phashes=hashes, threshold=DedupThresholds(hamming=t - 1))
    assert all(res[f"p{p:02d}b"] is None for p in range(64))


def test_scales_to_5000_clips():
    rng = np.random.default_rng(4)
    n = 5000
    emb = rng.normal(size=(n, 512)).astype(np.float32)
    emb[1::50] = emb[0::50] + 0.02 * rng.normal(size=emb[1::50].shape)  # 100 planted duplicates
    ids = [f"c{i:05d}" for i in range(n)]
    res = find_duplicates(ids, embeddings=emb)
    dups = {k: v for k, v in res.items() if v is not None}
    assert dups == {f"c{i:05d}": f"c{i - 1:05d}" for i in range(1, n, 50)}

    codes = rng.integers(0, 2**63, size=n, dtype=np.int64)
    codes[1::100] = codes[0::100] ^ 0b1011  # 3 bits off
    res = find_duplicates(ids, phashes=[f"{int(c):016x}" for c in codes])
    dups = {k: v for k, v in res.items() if v is not None}
    assert dups == {f"c{i:05d}": f"c{i - 1:05d}" for i in range(1, n, 100)}


def test_many_identical_clips_collapse_without_quadratic_edges():
    """20,000 copies of one black clip (same hash) and 20,000 of one embedding: one group each, kept = min id."""
    n = 20000
    ids = [f"h{i:05d}" for i in range(n)] + [f"e{i:05d}" for i in range(n)] + ["lonely"]
    hashes = ["8000000000000000"] * n + [None] * (n + 1)
    emb = [None] * n + [np.ones(8, np.float32)] * n + [None]
    res = find_duplicates(ids, embeddings=emb, phashes=hashes)
    assert res["h00000"] is None and res["e00000"] is None and res["lonely"] is None
    assert all(res[f"h{i:05d}"] == "h00000" for i in range(1, n))
    assert all(res[f"e{i:05d}"] == "e00000" for i in range(1, n))


def test_empty_input():
    assert find_duplicates([]) == {}


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        find_duplicates(["a", "a"], phashes=["0" * 16, "0" * 16])
    with pytest.raises(ValueError):
        find_duplicates(["a", "b"], embeddings=[[1.0, 0.0]])


def test_dedup_benchmark_scores_pairs_and_picks_the_threshold_on_tuning_pairs():
    """benchmarks/bench_dedup.py's own logic (its data needs ../shared): the rules that pick thresholds (highest
    precision at recall >= 0.9 for one value; for two, the highest recall at precision >= 0.95)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dedup.py"
    spec = importlib.util.spec_from_file_location("bench_dedup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pairs = [(0, True), (2, True), (3, False), (5, True), (9, False), (12, True)]
    assert bench.choose(pairs) == 12  # the only threshold with recall >= 0.9
    assert bench.choose([(0, True)] * 8 + [(1, False), (2, True)]) == 2  # 8 of 9 at 0: recall 0.89, not enough
    # pairs as (rows, 2) tables: a pair is called when one row is within both limits
    one = lambda a, b: np.array([[a, b], [np.inf, np.inf]])  # noqa: E731
    two = [one(0.0, 0.0)] * 18 + [one(0.05, 0.5)] * 5 + [one(0.1, 0.1)] * 2 + [one(0.5, 0.05)] * 5
    y = np.array([True] * 18 + [False] * 5 + [True] * 2 + [False] * 5)
    a, b = bench.choose2(np.stack(two), y)
    assert a >= 0.1 and b >= 0.1 and a < 0.5 and b < 0.5  # both limits pass the positives and stop the negatives
    # a positive whose values are only within limits on different rows is not called
    split = np.array([[[0.0, 0.9], [0.9, 0.0]]])
    assert not bench.called(split, (0.5, 0.5))[0] and bench.called(split, (0.9, 0.5))[0]
    # 18 positives at 0, 2 at 0.1, a negative at 0.05: recall 1 at precision 0.952 beats recall 0.9 at 1
    t = np.stack([one(0.0, 0.0)] * 18 + [one(0.1, 0.1)] * 2 + [one(0.05, 0.05)])
    assert bench.called(t, bench.choose2(t, np.array([True] * 20 + [False]))).all()
    # one more negative: precision 0.91 < 0.95 when all are called, so the limits stop at 0 (recall 0.9)
    t = np.concatenate([t, t[-1:]])
    hit = bench.called(t, bench.choose2(t, np.array([True] * 20 + [False] * 2)))
    assert hit.tolist() == [True] * 18 + [False] * 4


# ---------------------------------------------------------------------------------------------- sequence rule


def moving_clip(seed: int, k: int = 16, h: int = 120, w: int = 160, path=None) -> np.ndarray:
    """A textured still backdrop with a bright blob moving along ``path`` (k positions in unit coordinates)."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 4.0)
    bg = cv2.normalize(bg, None, 40, 200, cv2.NORM_MINMAX)
    path = path if path is not None else [(0.3 + 0.4 * t, 0.5) for t in np.linspace(0, 1, k)]
    out = []
    for y, x in path:
        f = bg.copy()
        cv2.circle(f, (int(x * w), int(y * h)), h // 8, (255, 255, 255), -1)
        out.append(f)
    return np.stack(out)


def crop(frames: np.ndarray, frac: float, oy: float, ox: float) -> np.ndarray:
    h, w = frames.shape[1:3]
    ch, cw = int(h * frac), int(w * frac)
    y, x = int(oy * (h - ch)), int(ox * (w - cw))
    return np.stack([cv2.resize(f[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def test_sequence_signature_format():
    f = moving_clip(0)
    sig = sequence_signature(f)
    assert isinstance(sig, bytes) and len(sig) == SIG_FRAMES * SIG_SIDE**2
    assert sequence_signature(f.copy()) == sig
    with pytest.raises(ValueError):
        sequence_signature(f[..., 0])


def test_sequence_rule_keeps_copies_and_tells_actions_apart():
    """Same backdrop: a copy (re-encoded, cropped off-centre, resized, faster, a later window) is a duplicate;
    the blob moving another way over the same backdrop (same scene, different action) is not."""
    th = DedupThresholds()
    lim = (th.sequence_appearance, th.sequence_motion)
    k = 20
    right = [(0.5, 0.2 + 0.6 * t) for t in np.linspace(0, 1, k)]
    base = moving_clip(0, path=right)
    sig = sequence_signature(base[:16])
    copies = {
        "reencode": reencode(base[:16]),
        "crop": crop(base[:16], 0.8, 0.2, 0.9),
        "resize": np.stack([cv2.resize(f, (80, 60), interpolation=cv2.INTER_AREA) for f in base[:16]]),
        "faster": base[:16][::2],
        "window": base[4:20],
    }
    for name, c in copies.items():
        score, app, mot = sequence_distance(sig, sequence_signature(c), lim)
        assert score <= 1.0, (name, app, mot)
    down = moving_clip(0, k=16, path=[(0.2 + 0.6 * t, 0.5) for t in np.linspace(0, 1, 16)])  # same backdrop
    assert sequence_distance(sig, sequence_signature(down), lim)[0] > 1.0
    assert sequence_distance(sig, sequence_signature(moving_clip(7, path=right[:16])), lim)[0] > 1.0  # other scene


def test_find_duplicates_sequence_rule_before_hash_and_after_embedding():
    k = 16
    right = [(0.5, 0.2 + 0.6 * t) for t in np.linspace(0, 1, k)]
    down = [(0.2 + 0.6 * t, 0.5) for t in np.linspace(0, 1, k)]
    a, b = moving_clip(0, path=right), moving_clip(0, path=down)  # one backdrop, two actions
    ids = ["a", "a2", "b", "c"]
    frames = [a, reencode(a), b, a]
    sigs = [sequence_signature(f) for f in frames]
    hashes = [phash_frames(f) for f in frames]
    assert hamming(hashes[0], hashes[2]) <= DedupThresholds().hamming  # the pHash alone would merge a and b
    res = find_duplicates(ids, phashes=hashes, signatures=sigs)
    assert res == {"a": None, "a2": "a", "b": None, "c": "a"}
    sigs[3] = None  # c has no signature: the hash decides for c
    res = find_duplicates(ids, phashes=hashes, signatures=sigs)
    assert res["c"] == "a" and res["b"] is None
    emb = [np.ones(4), np.array([1.0, 0, 0, 0]), None, None]  # a and a2 both embedded and far apart: not dups
    res = find_duplicates(ids, embeddings=emb, phashes=hashes, signatures=sigs)
    assert res["a2"] is None
    assert dedup_methods(emb, 4, sigs) == ["clip-embedding", "clip-embedding", "sequence", "phash"]
    with pytest.raises(ValueError):
        find_duplicates(ids, signatures=sigs[:2])


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 64])  # 64: one-row blocks
def test_sequence_blocking_finds_a_match_in_either_direction(chunk_bytes):
    """Clip 9's frame equals a window of clip 2 (9 is a crop of 2), 5 equals 3: found whatever the chunking."""
    from curate.dedup import _sequence_candidates

    rng = np.random.default_rng(0)
    win = rng.normal(size=(37, 28, 64)).astype(np.float32)
    win[5] = win[3]
    win[9, 0] = win[2, 4]
    win = (win - win.mean(-1, keepdims=True)) / win.std(-1, keepdims=True)
    assert _sequence_candidates(win, 0.5, chunk_bytes).tolist() == [[2, 9], [3, 5]]


def signer(seed: int, hand, h: int = 120, w: int = 160) -> np.ndarray:
    """One "signer" per seed: a textured still backdrop, a large light body drifting right (the same in every
    clip of the seed) and a small dark hand at the positions ``hand`` (one per frame, unit coordinates)."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 4.0)
    bg = cv2.normalize(bg, None, 40, 200, cv2.NORM_MINMAX)
    out = []
    for i, (y, x) in enumerate(hand):
        f = bg.copy()
        s = i / max(len(hand) - 1, 1)
        cv2.circle(f, (int((0.35 + 0.3 * s) * w), int(0.6 * h)), h // 4, (230, 230, 230), -1)
        cv2.circle(f, (int(x * w), int(y * h)), h // 14, (20, 20, 20), -1)
        out.append(f)
    return np.stack(out)


def test_sequence_rule_tells_one_signers_gestures_apart_and_keeps_a_cropped_faster_reencoded_copy():
    """Same backdrop, same large movement, a small hand that waves sideways in one clip and nods up and down in
    the other: the appearance matches (the hand stays within a few pixels), the motion of the hand's cell does
    not, so the pair is not a duplicate. A whole-frame motion measure is dominated by the shared body movement
    and calls it one. A copy of the waving clip that is cropped off-centre, twice as fast and re-encoded stays a
    duplicate."""
    th = DedupThresholds()
    lim = (th.sequence_appearance, th.sequence_motion)
    t = np.linspace(0, 1, 16)
    wave = sequence_signature(signer(1, [(0.2, 0.8 + 0.04 * np.sin(2 * np.pi * s)) for s in t]))
    nod = sequence_signature(signer(1, [(0.2 + 0.04 * np.sin(2 * np.pi * s), 0.8) for s in t]))
    score, app, mot = sequence_distance(wave, nod, lim)
    assert app <= th.sequence_appearance and mot > th.sequence_motion and score > 1.0
    long = signer(1, [(0.2, 0.8 + 0.04 * np.sin(2 * np.pi * s)) for s in np.linspace(0, 1, 32)])
    copy = reencode(crop(long[::2], 0.8, 0.3, 0.7))  # 32 frames played at 2x: 16, cropped, crf 35
    assert sequence_distance(wave, sequence_signature(copy), lim)[0] <= 1.0
    slow = reencode(crop(np.repeat(long[::4], 2, axis=0), 0.85, 0.9, 0.1))  # each frame twice (0.5x)
    assert sequence_distance(wave, sequence_signature(slow), lim)[0] <= 1.0


def test_sequence_rule_empty_scene_against_an_object_arriving():
    """A still scene against the same scene with an object entering from the left at 40 % of the clip: not a
    duplicate (the arrival falls inside every allowed time alignment). The same scene re-encoded is one."""
    empty = moving_clip(5, path=[(0.5, -1.0)] * 16)  # the blob outside the frame
    arriving = moving_clip(5, path=[(0.5, -1.0)] * 6 + [(0.5, x) for x in np.linspace(-0.1, 0.5, 10)])
    sig = sequence_signature(empty)
    assert sequence_distance(sig, sequence_signature(arriving))[0] > 1.0
    assert sequence_distance(sig, sequence_signature(reencode(empty)))[0] <= 1.0


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 64])  # 64: the memo's blocking one clip at a time
def test_sequence_memo_decides_the_pairs_ahead_and_changes_no_result(monkeypatch, chunk_bytes):
    """The build's driver adds each finished input's signatures to a SequenceMemo while the stream runs; publish
    then gets the same groups with no pair left to compare, and a memo that missed clips (a resumed run) only
    leaves those pairs to publish."""
    import curate.dedup as dedup

    k = 16
    right = [(0.5, 0.2 + 0.6 * t) for t in np.linspace(0, 1, k)]
    down = [(0.2 + 0.6 * t, 0.5) for t in np.linspace(0, 1, k)]
    a, b = moving_clip(0, path=right), moving_clip(0, path=down)
    frames = [a, reencode(a), b, reencode(b, crf=30), moving_clip(3, path=right), a]
    ids = ["a", "a2", "b", "b2", "other", "a3"]
    sigs = [sequence_signature(f) for f in frames]
    sigs[5] = sigs[0]  # an identical copy: one node
    quality = [0.5, 0.9, 0.1, 0.2, 0.3, 0.4]
    calls = []
    real = dedup._alike
    monkeypatch.setattr(dedup, "_alike", lambda *args: calls.append(1) or real(*args))
    plain = find_duplicates(ids, signatures=sigs, quality=quality)
    batch_calls = len(calls)
    assert plain == {"a": "a2", "a2": None, "b": "b2", "b2": None, "other": None, "a3": "a2"} and batch_calls >= 2

    memo = dedup.SequenceMemo(DedupThresholds(chunk_bytes=chunk_bytes))
    calls.clear()
    for part in (sigs[:2], sigs[2:4], sigs[4:]):  # inputs finishing one after another
        memo.add(part)
    ahead = len(calls)
    calls.clear()
    assert find_duplicates(ids, signatures=sigs, quality=quality, memo=memo) == plain
    assert calls == [] and ahead >= batch_calls  # every pair publish compares was decided ahead

    partial = dedup.SequenceMemo()
    partial.add(sigs[:3])
    calls.clear()
    assert find_duplicates(ids, signatures=sigs, quality=quality, memo=partial) == plain
    assert 0 < len(calls) < batch_calls  # only pairs with a clip the memo never saw
    other = dedup.SequenceMemo(DedupThresholds(sequence_motion=0.1))  # made under other weights: not used
    other.add(sigs)
    calls.clear()
    assert find_duplicates(ids, signatures=sigs, quality=quality, memo=other) == plain and len(calls) == batch_calls
