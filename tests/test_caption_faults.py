"""The fault matrix end to end: ``tessera caption`` on local Ray against a loopback server that misbehaves per
clip. Every clip comes in with an old caption and an old expansion; for each fault the test checks the row kept
them, its status, the summary count by reason, failures.parquet and the exit code; then the same command again
must ask the server for exactly the rows that failed and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openai_server import FakeOpenAIServer, make_clip_mp4
from pipelines.caption import cli

pytestmark = pytest.mark.slow

# (colour, VLM fault, expected caption status); clip i's id is clip-<i>-<colour>
VLM = [
    ("red", None, "ok"), ("green", "429", "ok"), ("blue", "429date", "ok"),
    ("yellow", "429long", "error:rate-limited"), ("magenta", "500", "error:http-500"),
    ("cyan", "503", "error:http-503"), ("white", "timeout", "error:timeout"), ("black", "drip", "error:timeout"),
    ("red", "resetbody", "error:connection"), ("green", "badjson", "error:bad-response"),
    ("blue", "empty", "error:empty"), ("yellow", "nullcontent", "error:empty"), ("magenta", "huge", "error:too-long"),
    ("cyan", "control", "error:charset"), ("white", "ansirefusal", "error:refused"),
    ("black", "wrongid", "error:id-mismatch"), ("red", "400", "error:http-400"), ("green", "401", "error:http-401"),
    ("blue", "404", "error:http-404"),
    ("white", None, "ok"), ("black", None, "ok"), ("cyan", None, "ok"), ("magenta", None, "ok"),
]
# expansion faults, keyed by the VLM caption of the one successful clip of that colour
EXPAND = {"white": ("pirate", "error:off-topic"), "black": ("leak", "error:leak:path"),
          "cyan": ("500", "error:http-500"), "magenta": ("refuse", "error:refused")}


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _dataset(root: Path) -> list[dict]:
    rows = []
    for i, (colour, _, _) in enumerate(VLM):
        rows.append({"clip_id": f"clip-{i:02d}-{colour}", "clip_mp4": make_clip_mp4(colour, seed=i), "clip_path": None,
                     "source_uri": f"/videos/v{i}.mp4", "caption_short": f"an old caption of a {colour} square {i}",
                     "caption_model": "old-vlm", "caption_expanded": f"an old expansion of a {colour} square {i}",
                     "expand_model": "old-llm", "expand_status": "ok", "caption_status": "ok"})
    (root / "clips").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "clips" / "part-00000.parquet")
    from curate.store import write_manifest  # readers open only what a manifest lists

    write_manifest(root, [root / "clips" / "part-00000.parquet"])
    from curate.schema import FAILURE_SCHEMA  # the build's own failures stay; an older caption run's are replaced

    old = [{"source_uri": "/videos/bad.mp4", "content_id": None, "outcome": "failed", "stage": "split",
            "reason": "decode-error", "error_class": None, "message": None, "clip_id": None},
           {"source_uri": "/videos/v0.mp4", "content_id": None, "outcome": "failed", "stage": "caption",
            "reason": "http-500", "error_class": None, "message": "from an earlier run", "clip_id": "clip-00-red"}]
    pq.write_table(pa.Table.from_pylist(old, schema=FAILURE_SCHEMA), root / "failures.parquet")
    return rows


def _args(src, out, server, timeout_s: float = 3.0) -> list[str]:
    return ["--input", str(src), "--output", str(out), "--backend", "openai", "--model", "fake-vlm",
            "--frames", "2", "--max-pixels", str(64 * 48), "--batch-size", "4", "--base-url", server.base_url,
            "--timeout", str(timeout_s), "--concurrency", "8", "--max-retry-wait", "2",
            "--expand-base-url", server.base_url, "--expand-model", "fake-llm", "--expand-timeout", "30"]


def test_fault_matrix_keeps_rows_counts_failures_and_reruns_exactly_the_failed(ray_session, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    before = {r["clip_id"]: r for r in _dataset(src)}
    faults = {f"clip-{i:02d}-{c}|": m for i, (c, m, _) in enumerate(VLM) if m}
    faults.update({f"plain {c} surface": m for c, (m, _) in EXPAND.items()})
    with FakeOpenAIServer(hang_s=8.0, drip_s=0.2, retry_after_s=1, faults=faults) as server:
        assert cli(_args(src, out, server)) == 3  # some rows failed: not a success
        err = capsys.readouterr().err
        assert "re-run the same command to retry exactly these rows" in err and "\x1b" not in err
        table = pq.read_table(out / "clips" / "part-00000.parquet")
        got = {r["clip_id"]: r for r in table.to_pylist()}
        assert list(got) == list(before)  # every row, same order
        want_caption, want_expand = {}, {}
        for i, (colour, marker, status) in enumerate(VLM):
            cid, row, old = f"clip-{i:02d}-{colour}", got[f"clip-{i:02d}-{colour}"], before[f"clip-{i:02d}-{colour}"]
            assert row["caption_status"] == status, (cid, row["caption_status"], row["caption_error"])
            if status == "ok":
                assert row["caption_short"] == f"A video of a plain {colour} surface seen in 2 frames."
                assert row["caption_model"] == "openai:fake-vlm"
            else:  # the old caption and its provenance stay; the status says what failed
                assert (row["caption_short"], row["caption_model"]) == (old["caption_short"], "old-vlm"), cid
                assert row["caption_error"] and "\x1b" not in row["caption_error"]
                want_caption[status[6:]] = want_caption.get(status[6:], 0) + 1
            expand_fault = EXPAND.get(colour) if status == "ok" and marker is None and i >= 19 else None
            if expand_fault:
                assert row["expand_status"] == expand_fault[1], (cid, row["expand_status"])
                assert (row["caption_expanded"], row["expand_model"]) == (old["caption_expanded"], "old-llm")
                want_expand[expand_fault[1][6:]] = want_expand.get(expand_fault[1][6:], 0) + 1
            else:
                assert row["expand_status"] == "ok", (cid, row["expand_status"], row["expand_error"])
        summary = json.loads((out / "caption_summary.json").read_text())
        assert summary["caption"]["failed_by_reason"] == want_caption
        assert summary["caption"]["failed"] == sum(want_caption.values()) == 16
        assert summary["caption"]["kept_previous"] == 16 and summary["caption"]["ok"] == 7
        assert summary["expand"]["failed_by_reason"] == want_expand and summary["expand"]["kept_previous"] == 4
        assert summary["complete"] is False and not (out / "_manifest.json").exists()
        failures = pq.read_table(out / "failures.parquet").to_pylist()
        assert sorted((f["stage"], f["reason"]) for f in failures) == sorted(
            [("split", "decode-error")] + [("caption", k) for k, n in want_caption.items() for _ in range(n)]
            + [("expand", k) for k, n in want_expand.items() for _ in range(n)])
        failed_ids = {cid for cid, r in got.items() if r["caption_status"] != "ok"}

        # the same command, the server healthy again: exactly the failed rows are asked, nothing else
        server.faults.clear()
        n_before = len(server.requests())
        assert cli(_args(src, out, server, timeout_s=60.0)) == 0  # a loaded CI machine must not fail a row
        again = server.requests()[n_before:]
        vlm_asked = {s.request_id.split("|")[0] for s in again if s.body["model"] == "fake-vlm"}
        assert vlm_asked == failed_ids and len([s for s in again if s.body["model"] == "fake-vlm"]) == 16
        new = {r["clip_id"]: r for r in pq.read_table(out / "clips" / "part-00000.parquet").to_pylist()}
        assert all(r["caption_status"] == "ok" and r["expand_status"] == "ok" for r in new.values())
        ok_texts = {r["caption_short"] for cid, r in got.items() if r["expand_status"] == "ok"
                    and r["caption_status"] == "ok"}
        retried = {new[cid]["caption_short"] for cid in failed_ids} | {
            new[cid]["caption_short"] for cid, r in got.items() if r["expand_status"] != "ok"}
        expand_asked = [s for s in again if s.body["model"] == "fake-llm"]
        assert len(expand_asked) == len(retried - ok_texts)  # each text not yet expanded, once
        assert json.loads((out / "_manifest.json").read_text())["complete"] is True
        assert [f["stage"] for f in pq.read_table(out / "failures.parquet").to_pylist()] == ["split"]
