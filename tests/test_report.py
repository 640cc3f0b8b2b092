"""``tessera report``: the page, its figures, escaping, sampling, frame picking, and what a browser shows.

The dataset fixture is written directly with pyarrow (clip rows validated against ``CLIP_SCHEMA``, tiny clips
encoded with PyAV, a real ``selection.parquet`` from ``curate.filter``, hostile strings in failures and captions),
so no Ray build runs here. The Chromium test needs Debian's ``chromium`` package and is skipped without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import media
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.filter import FilterSpec, apply_filters
from curate.schema import CLIP_SCHEMA, FAILURE_SCHEMA, SCHEMA_VERSION, clip_id, rows_to_table, validate
from curate.store import write_manifest
from pipelines.report import PRIMARY, ReportConfig, cli, decode_strip, main, sample_ids

HOSTILE_URI = "<script>alert(1)</script>.mp4"
HOSTILE_MSG = '<img src=x onerror="alert(2)"> & broken'
HOSTILE_CAPTION = "a red ball <b>bounces</b> & rolls"
GREEN = (20, 200, 40)
COLOURS = [GREEN, (200, 40, 40), (40, 60, 200), (220, 200, 30), (150, 40, 180), (30, 180, 180)]  # one per clip
N_CLIPS = 6
FPS = 12.0


def _frames(n: int, w: int, h: int, rgb: tuple[int, int, int]) -> list[np.ndarray]:
    """Solid colour with a white square moving left to right."""
    out = []
    for i in range(n):
        f = np.empty((h, w, 3), np.uint8)
        f[:] = rgb
        x = (i * 4) % (w - 8)
        f[h // 2 - 4 : h // 2 + 4, x : x + 8] = 255
        out.append(f)
    return out


def _clip_row(k: int, mp4: Path, uri: str, w: int, h: int, n: int) -> dict:
    cid = clip_id(f"content{k % 3}", k * 100, k * 100 + n)
    return {
        "clip_id": cid, "source_uri": uri, "content_id": f"content{k % 3}", "scene_index": k, "window_index": 0,
        "start_frame": k * 100, "end_frame": k * 100 + n, "start_s": k * 100 / FPS, "end_s": (k * 100 + n) / FPS,
        "cut_in": "cut", "cut_out": "cut", "fps": FPS, "num_frames": n, "duration_s": n / FPS, "width": w,
        "height": h, "aspect": w / h, "clip_codec": "h264", "cut_method": "reencode", "clip_bytes": mp4.stat().st_size,
        "scores_status": "ok", "sharpness": 10.0 + 40 * k, "luma_mean": 60.0 + 20 * k, "luma_std": 20.0 + k,
        "black_share": 0.0, "motion_mean": 0.5 * k, "motion_p90": 1.0 * k, "motion_static": k == 1,
        "motion_jitter": False, "clip_aesthetic": None, "clip_status": "no-model", "text_coverage": 0.004 * k,
        "ocr_status": "ok", "phash": f"{k:016x}", "duplicate_of": None, "build_fingerprint": "fp-test",
        "schema_version": SCHEMA_VERSION,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A published dataset: 2 shards (one clip stored as a file), failures, selection, summary, manifest."""
    root = tmp_path_factory.mktemp("ds")
    (root / "clips").mkdir()
    (root / "media").mkdir()
    rows, mp4s = [], []
    for k in range(N_CLIPS):
        w, h = (64, 36) if k % 2 == 0 else (48, 48)
        n = 24 + 6 * k
        mp4 = media.write_video(root / "media" / f"c{k}.mp4", _frames(n, w, h, COLOURS[k]), FPS)
        rows.append(_clip_row(k, mp4, f"/videos/{'clip' if k else 'green'}-{k}.mp4", w, h, n))
        mp4s.append(mp4)
    rows[2]["duplicate_of"] = rows[0]["clip_id"]
    for k, (row, mp4) in enumerate(zip(rows, mp4s)):
        if k == 3:
            row["clip_path"] = "media/c3.mp4"  # stored as a path, the others as bytes
        else:
            row["clip_mp4"] = mp4.read_bytes()
    table = rows_to_table(rows, CLIP_SCHEMA)
    captions = [HOSTILE_CAPTION if k == 0 else ("a clip with several words " * (k + 1)).strip() for k in range(N_CLIPS)]
    # as `tessera caption` fills it (a column of the clip schema since 1.1)
    table = table.set_column(table.schema.get_field_index("caption_short"), "caption_short",
                             pa.array(captions, pa.string()))
    shards = []
    for i, part in enumerate((table.slice(0, 4), table.slice(4))):
        path = root / "clips" / f"part-{i:05d}.parquet"
        pq.write_table(part, path)
        shards.append({"path": f"clips/{path.name}", "rows": part.num_rows, "bytes": path.stat().st_size,
                       "sha256": "x"})
    pq.write_table(apply_filters(table.drop_columns(["clip_mp4"]), FilterSpec()), root / "selection.parquet")
    failures = [
        {"source_uri": HOSTILE_URI, "outcome": "rejected", "stage": "probe", "reason": "not-a-video",
         "error_class": "InvalidDataError", "message": HOSTILE_MSG, "clip_id": None},
        {"source_uri": "/videos/truncated.mp4", "outcome": "failed", "stage": "split", "reason": "decode-error",
         "error_class": "EOFError", "message": "end of file", "clip_id": None},
        {"source_uri": "/videos/tiny.mp4", "outcome": "rejected", "stage": "probe", "reason": "too-short",
         "error_class": None, "message": "0.4 s", "clip_id": None},
    ]
    pq.write_table(validate(pa.Table.from_pylist(failures), FAILURE_SCHEMA), root / "failures.parquet")
    summary = {
        "created_at": "2026-11-22T00:00:00+00:00", "fingerprint": "fp-test",
        "inputs": {"total": 6, "accepted": 3, "rejected": 2, "failed": 1, "incomplete": 0},
        "clips": {"published": N_CLIPS, "duplicates": 1},
        "models": {"clip": {"note": f"{N_CLIPS} clips have no CLIP score: no model configured"}},
        "time_per_stage_s": {"t_probe": 0.4, "t_split": 6.5, "t_score_basic": 2.0, "t_score_ocr": 3.1,
                             "t_score_clip": 0.0, "t_write": 0.2},
        "wall_s": 12.5,
        "stages": {"probe": {"in": 6, "ok": 4, "rejected": 2, "failed": 0}, "score": {"in": 6, "status": {"ok": 6}}},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    (root / "_manifest.json").write_text(json.dumps({"format": "tessera-clips", "shards": shards,
                                                     "rows": N_CLIPS}))
    return root


@pytest.fixture(scope="module")
def report(dataset: Path) -> dict:
    (dataset / "report").mkdir()
    (dataset / "report" / "stale.png").write_bytes(b"old")  # a figure of an earlier report must go
    return main(ReportConfig(dataset=str(dataset)))


def _html(dataset: Path) -> str:
    return (dataset / "report" / "index.html").read_text(encoding="utf-8")


def test_every_figure_exists_and_is_referenced(dataset: Path, report: dict):
    html = _html(dataset)
    srcs = re.findall(r'<img src="([^"]+)"', html)
    out = dataset / "report"
    for src in srcs:  # every figure the page references is a real PNG inside report/
        assert not src.startswith(("/", "http", "data:")) and ".." not in src, src
        with Image.open(out / src) as im:
            assert im.format == "PNG" and im.width > 50 and im.height > 10
    expected = {"duration.png", "fps.png", "resolution.png", "keep_rate.png", "failures.png",
                "caption_lengths.png", "time_per_stage.png",
                *(f"score_{c}.png" for c in ("sharpness", "luma_mean", "luma_std", "black_share", "motion_mean",
                                             "motion_p90", "text_coverage", "motion_static", "motion_jitter")),
                *(f"sheets/clip-{k:02d}.png" for k in range(N_CLIPS))}
    assert set(srcs) == expected == set(report["figures"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(expected)  # stale.png gone
    assert report["sheets"] == N_CLIPS and report["clips"] == N_CLIPS
    # an all-null score gets a visible note, not an empty plot
    assert "clip_aesthetic: no model configured (6 of 6 clips say no-model)" in html
    assert "score_clip_aesthetic.png" not in html


def test_page_is_self_contained_and_escapes_hostile_strings(dataset: Path, report: dict):
    html = _html(dataset)
    assert "<script" not in html.lower()  # no raw markup from the data, and the page runs no JS at all
    tags = re.findall(r"<img\b[^>]*>", html)  # every image tag is one of ours: src + alt, nothing else
    assert tags and all(re.fullmatch(r'<img src="[^"<>]+" alt="[^"<>]*">', t) for t in tags), tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.mp4" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt; &amp; broken" in html
    assert "a red ball &lt;b&gt;bounces&lt;/b&gt; &amp; rolls" in html  # the caption, under its clip
    assert not re.search(r"(src|href)=\"?(https?:)?//", html) and "url(" not in html and "@import" not in html


def test_numbers_on_the_page_match_the_tables(dataset: Path, report: dict):
    html = _html(dataset)
    sel = pq.read_table(dataset / "selection.parquet")
    kept = sum(sel["keep"].to_pylist())
    assert 0 < kept < N_CLIPS  # the fixture rejects some clips (sharpness 10, the duplicate)
    assert f"<b>{kept} ({100 * kept / N_CLIPS:.0f} %)</b><span>kept by filters</span>" in html
    assert "<th>probe</th><td>in <b>6</b> &middot; ok <b>4</b>" in html and "status <b>ok 6</b>" in html
    # every failure row is in the table, with its reason
    for reason in ("not-a-video", "decode-error", "too-short"):
        assert f"<td>{reason}</td>" in html
    # each sheet says whether its clip was kept, and which filter rejected it first
    assert html.count('class="keep">kept<') == kept
    assert 'rejected by drop_duplicates' in html and 'rejected by min_sharpness' in html


def test_sampling_is_deterministic_and_stable():
    ids = [f"id{i:03d}" for i in range(200)]
    a = sample_ids(ids, 12, seed=0)
    assert a == sample_ids(list(reversed(ids)), 12, seed=0) and len(set(a)) == 12
    assert a != sample_ids(ids, 12, seed=1)
    more = sample_ids(ids + [f"new{i}" for i in range(50)], 400, seed=0)
    assert [x for x in more if x in a] == a  # adding clips never reshuffles the ones already sampled
    assert sample_ids(ids[:5], 12, seed=0) and len(sample_ids(ids[:5], 12, seed=0)) == 5


def test_decode_strip_takes_evenly_spread_frames(tmp_path: Path):
    # frame i is solid grey 10*i: the strip's thumbs must show the frames at the centres of 6 equal segments
    frames = [np.full((32, 48, 3), 10 * i, np.uint8) for i in range(24)]
    mp4 = media.write_video(tmp_path / "grey.mp4", frames, 12.0)
    strip = np.asarray(decode_strip(mp4.read_bytes(), 6, 16))
    assert strip.shape == (16, 6 * 24 + 5 * 3, 3)  # 48x32 scaled to 24x16, 3 px gaps
    levels = [strip[:, k * 27 : k * 27 + 24].mean() for k in range(6)]
    assert np.allclose(levels, [10 * i for i in (2, 6, 10, 14, 18, 22)], atol=6), levels
    assert np.array_equal(np.asarray(decode_strip(mp4, 6, 16)), strip)  # from a path as from bytes


def test_cli_and_a_captioned_copy_without_side_tables(dataset: Path, tmp_path: Path, report: dict):
    # a `tessera caption` output: shards + a manifest naming its source, no summary/selection/failures
    copy = tmp_path / "captioned"
    (copy / "clips").mkdir(parents=True)
    manifest = json.loads((dataset / "_manifest.json").read_text())
    for s in manifest["shards"]:
        shutil.copyfile(dataset / s["path"], copy / s["path"])
    (copy / "media").mkdir()
    shutil.copyfile(dataset / "media" / "c3.mp4", copy / "media" / "c3.mp4")
    (copy / "_manifest.json").write_text(json.dumps({"kind": "tessera-captioned", "source": str(dataset),
                                                     "shards": manifest["shards"]}))
    out = tmp_path / "rep"
    assert cli([str(copy), "--out", str(out), "--clips", "2", "--frames", "3"]) == 0
    html = (out / "index.html").read_text()
    assert len(list((out / "sheets").glob("*.png"))) == 2
    assert "build numbers are from the source dataset" in html and "time_per_stage.png" in html
    assert "No filter results" in html and "keep_rate.png" not in html


def test_broken_clips_and_an_empty_dataset_still_give_a_page(dataset: Path, tmp_path: Path):
    # two clips whose media cannot be shown: corrupt bytes, and a clip_path that leaves the dataset
    root = tmp_path / "broken"
    (root / "clips").mkdir(parents=True)
    rows = [_clip_row(k, dataset / "media" / f"c{k}.mp4", f"/v/{k}.mp4", 64, 36, 24) for k in range(2)]
    rows[0]["clip_mp4"] = b"\x00\x00\x00\x18ftypisom garbage"
    rows[1]["clip_path"] = "../../etc/passwd"
    pq.write_table(rows_to_table(rows, CLIP_SCHEMA), root / "clips" / "part-00000.parquet")
    (root / "_manifest.json").write_text(json.dumps({"shards": [{"path": "clips/part-00000.parquet", "rows": 2}]}))
    res = main(ReportConfig(dataset=str(root)))
    html = (root / "report" / "index.html").read_text()
    assert res["sheets"] == 0 and not list((root / "report" / "sheets").glob("*.png"))
    assert html.count("could not decode this clip") == 2 and "points outside the dataset" in html
    assert "score_sharpness.png" in html  # the rest of the page is still there
    # every input failed: no shards at all, the failures still make a page
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "_manifest.json").write_text(json.dumps({"shards": []}))
    shutil.copyfile(dataset / "failures.parquet", empty / "failures.parquet")
    res = main(ReportConfig(dataset=str(empty)))
    html = (empty / "report" / "index.html").read_text()
    assert res["clips"] == 0 and res["figures"] == ["failures.png"]
    assert "The dataset has no clips" in html and "<td>not-a-video</td>" in html
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        main(ReportConfig(dataset=str(tmp_path / "nothing")))


def _screenshot(chromium: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,8000",
           page.as_uri()]
    try:
        subprocess.run(cmd, check=True, timeout=90, capture_output=True)
    except subprocess.TimeoutExpired:  # e.g. an alert() from unescaped data blocks the headless page
        pytest.fail(f"chromium did not finish rendering {page} in 90 s")
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _near(img: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_chromium_shows_the_figures(dataset: Path, report: dict, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")
    primary = tuple(int(PRIMARY[i : i + 2], 16) for i in (1, 3, 5))
    shot = _screenshot(chromium, dataset / "report" / "index.html", tmp_path / "page.png", tmp_path / "p1")
    assert shot.shape[1] == 1280 and shot.std() > 20  # not a blank page
    bars = _near(shot, primary)
    assert bars > 300_000, bars  # the blue of ~17 bar charts and histograms (~50k px each), painted
    sheets = [_near(shot, rgb, tol=20) for rgb in COLOURS]
    assert min(sheets) > 500, sheets  # every clip's contact sheet (one solid colour each) decoded and painted
    # control: the same page with its PNGs missing paints neither, so the checks above can fail
    broken = tmp_path / "broken"
    shutil.copytree(dataset / "report", broken)
    for p in broken.rglob("*.png"):
        p.unlink()
    empty = _screenshot(chromium, broken / "index.html", tmp_path / "broken.png", tmp_path / "p2")
    assert _near(empty, primary) < bars // 20 and _near(empty, GREEN, tol=20) < 50


def _dump_dom(chromium: str, page: Path, profile: Path) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--autoplay-policy="
           "no-user-gesture-required", f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom",
           page.as_uri()]
    return subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True).stdout


def test_chromium_loads_every_image_and_video(dataset: Path, report: dict, tmp_path: Path):
    """A copy of the page with a script that records, per <img> and <video>, whether the browser loaded it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")
    probe = ("<script>addEventListener('load', () => setTimeout(() => {"
             "const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
             ".concat([...document.querySelectorAll('video')].filter(v => v.readyState < 1 || v.error)"
             ".map(v => v.src));"
             "document.body.setAttribute('data-media', document.images.length + document.querySelectorAll("
             "'video').length + ':' + JSON.stringify(bad));}, 3000));</script>")

    def loaded(folder: Path, profile: str) -> tuple[int, list[str]]:
        page = folder / "probe.html"
        page.write_text((folder / "index.html").read_text(encoding="utf-8").replace("</body>", probe + "</body>"),
                        encoding="utf-8")
        found = re.search(r'data-media="(\d+):([^"]*)"', _dump_dom(chromium, page, tmp_path / profile))
        assert found
        return int(found.group(1)), json.loads(found.group(2).replace("&quot;", '"'))

    copy = tmp_path / "report"
    shutil.copytree(dataset / "report", copy)
    count, bad = loaded(copy, "p3")
    assert count == len(report["figures"]) + len(report["videos"]) and bad == [], bad
    # control: a truncated video and a missing figure are reported, so the check above can fail
    video = copy / "media" / report["videos"][0]
    video.write_bytes(video.read_bytes()[:200])
    (copy / report["figures"][0]).unlink()
    _, bad = loaded(copy, "p4")
    assert sorted(Path(b).name for b in bad) == sorted([Path(report["figures"][0]).name, video.name]), bad


def test_warnings_sources_rejections_what_if_and_duplicate_pairs(dataset: Path, report: dict):
    page = _html(dataset)
    # headline: the aesthetic score had no model; failed inputs exist
    box = page[page.index('class="warn"'):page.index("</div>", page.index('class="warn"'))]
    assert "clip_aesthetic: no model for 6 of 6 clips" in box and "3 inputs or clips failed" in box
    assert report["warnings"] and all(html_escape(w) in box for w in report["warnings"])
    # per-source table: one row per source, failed inputs included
    sources = page[page.index("<h2>Sources"):page.index("</table>", page.index("<h2>Sources"))]
    for k in range(N_CLIPS):
        assert f"{'clip' if k else 'green'}-{k}.mp4" in sources
    assert "truncated.mp4" in sources and sources.count("<tr>") == 1 + N_CLIPS + 3
    # the duplicate (clip 2) beside its partner (clip 0), with the phash distance of their hashes (2 vs 0: 1 bit)
    dups = page[page.index("<h2>Near-duplicates"):]
    assert "phash Hamming distance 1 of 64" in dups and dups.count("<video") >= 2
    # every rejected clip is named under the filter that rejected it, with the judged value
    rejected = page[page.index("<h2>Rejected clips"):page.index("</table>", page.index("<h2>Rejected clips"))]
    sel = pq.read_table(dataset / "selection.parquet").to_pylist()
    for row in sel:
        for k, v in row.items():
            if k.startswith("pass_") and v is False:
                assert row["clip_id"] in rejected, (k, row["clip_id"])
    # what-if: at x1 the keep rate is the selection's own
    what_if = page[page.index("<h2>What if"):page.index("</table>", page.index("<h2>What if"))]
    kept = round(100 * np.mean([r["keep"] for r in sel]))
    assert f"<td class=keep>{kept} %" in what_if and "min_sharpness" in what_if


def html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_videos_are_the_stored_clips_and_every_referenced_file_exists(dataset: Path, report: dict):
    import av

    page = _html(dataset)
    srcs = re.findall(r'<(?:img|video)[^>]* src="([^"]+)"', page)
    assert len(srcs) == len(report["figures"]) + len(report["videos"])
    assert all((dataset / "report" / s).is_file() for s in srcs), srcs
    videos = [s for s in srcs if s.endswith(".mp4")]
    assert len(videos) >= report["sheets"] + 2
    for s in videos:
        with av.open(str(dataset / "report" / s)) as c:
            assert sum(1 for _ in c.decode(video=0)) >= 24  # a whole clip, playable


def test_captions_section_is_there_without_captions(dataset: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    shutil.copytree(dataset, bare, ignore=shutil.ignore_patterns("report"))
    for shard in (bare / "clips").glob("*.parquet"):
        t = pq.read_table(shard)
        i = t.schema.get_field_index("caption_short")
        pq.write_table(t.set_column(i, "caption_short", pa.nulls(t.num_rows, pa.string())), shard)
    write_manifest(bare, (bare / "clips").glob("*.parquet"))  # published again, as a caption run would
    res = main(ReportConfig(dataset=str(bare), sample_clips=1))
    page = (bare / "report" / "index.html").read_text()
    assert "<h2>Captions</h2>" in page and "Every caption column is empty" in page
    assert any(w.startswith("6 of 6 clips have no caption") for w in res["warnings"])


def test_a_histogram_of_equal_values_stays_in_their_domain():
    from pipelines.report import _hist

    ax = _hist(np.zeros(9), "black_share", "share").axes[0]
    lo, hi = ax.get_xlim()
    assert lo == 0.0 and hi > 0 and "all = 0" in ax.get_title(loc="left")
    lo, hi = _hist(np.full(4, 24.0), "fps", "fps").axes[0].get_xlim()
    assert lo < 24 < hi and lo > 0


def test_training_report_renders_tables_and_links_the_raw_summary(tmp_path: Path):
    from pipelines.loop import markdown_html, write_training_report

    md = "| frames from | split | acc |\n|---|---|---|\n| generated | seen | **0.812** |\n"
    assert markdown_html(md) == ("<table><tr><th>frames from</th><th>split</th><th>acc</th></tr><tr><td>generated"
                                 "</td><td>seen</td><td><b>0.812</b></td></tr></table>")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.md").write_text(md)
    summary = {"vae": {"steps": 13, "first_loss": 0.9, "last_loss": 0.8}, "seconds": {"vae_s": 150.0},
               "accuracy": {"seen": {"color": 0.1, "shape": 0.2, "motion": 0.3, "attribute": 0.2}}}
    page = write_training_report(tmp_path / "rep", tmp_path / "vae", tmp_path / "dit", tmp_path / "eval", summary,
                                 ["the VAE learned too little: colour 0.00"]).read_text()
    assert "**" not in page and "<td><b>0.812</b></td>" in page
    assert "<li>the VAE learned too little: colour 0.00</li>" in page and "13 steps, loss 0.9 -&gt; 0.8" in page
    assert "href='loop.json'" in page and json.loads((tmp_path / "rep" / "loop.json").read_text()) == summary
