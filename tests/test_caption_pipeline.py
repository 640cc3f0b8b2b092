"""End-to-end ``tessera caption`` on local Ray: two shards of synthetic colour clips (inline bytes and clip_path,
one corrupt), the VLM and the expander both on the loopback server with random delays; then re-runs that must
re-decode and re-caption nothing, and a changed expand model that re-runs only the expander."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caption.expand import ExpandConfig, OpenAIEndpoint
from caption.frames import FrameConfig
from caption.vlm import VLMConfig
from helpers import RayInitStopped
from curate.store import write_manifest
from openai_server import FakeOpenAIServer, write_clip_shards
from pipelines.caption import CaptionPipelineConfig, cli, main

SECRET = "sk-pipeline-SECRET-42"


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
             log_to_driver=False)  # a private cluster, never one another process started
    yield ray
    ray.shutdown()


def _dataset(tmp_path: Path) -> tuple[Path, list[dict]]:
    src = tmp_path / "in"
    colours = ["red", "green", "blue", "yellow", "magenta", "cyan", "white", "black"]
    rows = write_clip_shards(str(src / "a"), colours[:4], shards=1, bytes_inline=True)
    rows += write_clip_shards(str(src / "b"), colours[4:], shards=1, bytes_inline=False)
    (src / "clips").mkdir(parents=True)
    # shard 0: inline bytes (+ one corrupt clip); shard 1: clips stored as files under the dataset dir
    t0 = pq.read_table(src / "a" / "clips" / "part-00000.parquet")
    bad = t0.slice(0, 1).to_pylist()[0] | {"clip_id": "clip-bad", "clip_mp4": b"\x00\x01 not mp4", "colour": None}
    t0 = pa.concat_tables([t0, pa.Table.from_pylist([bad], schema=t0.schema)])
    pq.write_table(t0, src / "clips" / "part-00000.parquet")
    (src / "b" / "media").rename(src / "media")
    pq.write_table(pq.read_table(src / "b" / "clips" / "part-00000.parquet"), src / "clips" / "part-00001.parquet")
    write_manifest(src, (src / "clips").glob("*.parquet"))  # readers open a dataset through its manifest
    return src, rows


def _cfg(src: Path, out: Path, server, expand_model: str = "fake-llm") -> CaptionPipelineConfig:
    def ep(model):
        return OpenAIEndpoint(base_url=server.base_url, model=model, api_key=SECRET, timeout_s=10, max_retries=1,
                              backoff_s=0.01, concurrency=4)

    return CaptionPipelineConfig(
        input=str(src), output=str(out),
        vlm=VLMConfig(backend="openai", kinds=("short", "dense"), frames=FrameConfig(n_frames=2, max_pixels=64 * 48),
                      endpoint=ep("fake-vlm")),
        expand=ExpandConfig(backend="openai", endpoint=ep(expand_model), relevance=None),
        batch_size=3, captioner_concurrency=2, expander_concurrency=1)


def test_caption_pipeline_end_to_end_and_reruns(ray_session, tmp_path, monkeypatch, capsys, ray_data_log):
    src, rows = _dataset(tmp_path)
    out = tmp_path / "out"
    with FakeOpenAIServer(jitter_s=0.1, seed=5) as server:
        summary = main(_cfg(src, out, server))
        assert not ray_data_log.deprecations()  # the caption stages use Ray Data's current API
        assert len(server.requests(probe=True)) == 2  # one probe per endpoint before any clip is read
        n_vlm = sum(1 for s in server.requests() if s.body["model"] == "fake-vlm")
        n_exp = sum(1 for s in server.requests() if s.body["model"] == "fake-llm")
        assert n_vlm == 2 * 8 and n_exp == 8  # 8 good clips x 2 kinds; one expansion each (dense first)

        # same shard names, same rows in the same order, caption columns added
        assert sorted(p.name for p in (out / "clips").glob("*.parquet")) == ["part-00000.parquet",
                                                                              "part-00001.parquet"]
        for name in ("part-00000.parquet", "part-00001.parquet"):
            before, after = pq.read_table(src / "clips" / name), pq.read_table(out / "clips" / name)
            assert after.column("clip_id").to_pylist() == before.column("clip_id").to_pylist()
            assert set(before.column_names) <= set(after.column_names)
        table = pa.concat_tables([pq.read_table(out / "clips" / n) for n in ("part-00000.parquet",
                                                                            "part-00001.parquet")])
        for col in ("caption_short", "caption_dense", "caption_backend", "caption_model", "caption_prompt_id",
                    "caption_status", "caption_error", "caption_tokens", "caption_expanded", "expand_status",
                    "expand_error", "expand_model", "expand_template"):
            assert col in table.column_names, col
        assert not any(c.startswith("_") or c == "caption_frames" for c in table.column_names)
        by_id = {r["clip_id"]: r for r in table.to_pylist()}
        for r in rows:  # every caption belongs to its clip (the fake VLM names the clip's colour)
            got = by_id[r["clip_id"]]
            assert got["caption_status"] == "ok" and f"plain {r['colour']} surface" in got["caption_short"]
            assert got["expand_status"] == "ok" and got["caption_dense"].rstrip(".") in got["caption_expanded"]
            assert got["caption_model"] == "openai:fake-vlm" and got["expand_template"] == "expand@v1"
        bad = by_id["clip-bad"]
        assert bad["caption_status"] == "error:decode" and bad["caption_short"] is None
        assert bad["expand_status"] == "skipped:no-input"
        assert summary["counts"]["clips"] == 9 and summary["counts"]["decoded"] == 8
        # the corrupt clip is a counted failure: in the summary by reason, in failures.parquet, no manifest
        assert summary["caption"]["failed"] == 1 and summary["caption"]["failed_by_reason"] == {"decode": 1}
        assert summary["caption"]["ok"] == 8 and summary["expand"]["failed"] == 0
        assert summary["complete"] is False and not (out / "_manifest.json").exists()
        failures = pq.read_table(out / "failures.parquet").to_pylist()
        assert [(f["clip_id"], f["stage"], f["reason"]) for f in failures] == [("clip-bad", "caption", "decode")]
        saved = (out / "caption_config.json").read_text()
        assert SECRET not in saved and SECRET not in json.dumps(summary)

        # re-run: nothing decoded, nothing asked again (the bad clip is retried, and fails again)
        seen = len(server.requests())
        first = pq.read_table(out / "clips" / "part-00001.parquet").drop_columns(["caption_tokens"])
        again = main(_cfg(src, out, server))
        assert len(server.requests()) == seen
        assert again["counts"]["decoded"] == 0
        rerun = pq.read_table(out / "clips" / "part-00001.parquet")
        assert rerun.schema == pq.read_table(out / "clips" / "part-00000.parquet").schema  # stable types
        assert set(rerun.column("caption_tokens").to_pylist()) == {0}  # cached: no tokens spent
        assert rerun.drop_columns(["caption_tokens"]).to_pylist() == first.to_pylist()
        assert [r for r in table.drop_columns(["caption_tokens"]).to_pylist() if r["clip_id"] in
                {x["clip_id"] for x in rows[4:]}] == first.to_pylist()

        # a changed expand model invalidates only the expander: no decode, no VLM call (through the CLI)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        assert cli(["--input", str(src), "--output", str(out), "--backend", "openai", "--model", "fake-vlm",
                    "--kinds", "short,dense", "--frames", "2", "--max-pixels", str(64 * 48), "--batch-size", "3",
                    "--base-url", server.base_url, "--timeout", "10", "--expand-base-url", server.base_url,
                    "--expand-model", "fake-llm-2"]) == 3  # the corrupt clip still fails: not a success
        assert cli(["--input", str(src), "--output", str(out), "--backend", "openai", "--model", "fake-vlm",
                    "--kinds", "short,dense", "--frames", "2", "--max-pixels", str(64 * 48), "--batch-size", "3",
                    "--base-url", server.base_url, "--timeout", "10", "--expand-base-url", server.base_url,
                    "--expand-model", "fake-llm-2", "--allow-partial", "--no-probe"]) == 0
        manifest = json.loads((out / "_manifest.json").read_text())
        assert [s["rows"] for s in manifest["shards"]] == [5, 4] and manifest["complete"] is False
        third = json.loads((out / "caption_summary.json").read_text())
        assert SECRET not in capsys.readouterr().out + (out / "caption_config.json").read_text()
        new = server.requests()[seen:]
        assert third["counts"]["decoded"] == 0
        assert {s.body["model"] for s in new} == {"fake-llm-2"} and len(new) == 8  # the second run: all cached
        # $OPENAI_API_KEY is set, but no --api-key-env named it for this host: it is never sent there
        assert {s.authorization for s in new} == {"Bearer EMPTY"}
        assert set(pq.read_table(out / "clips" / "part-00000.parquet").column("expand_model").to_pylist()) == \
            {"openai:fake-llm-2"}


def test_progress_says_what_the_chat_clients_wait_on(tmp_path):
    """The driver's progress line comes from the actors' progress files: requests in flight, retries, and what a
    wait is for (here a Retry-After)."""
    import io

    from caption.chat import ChatProgress, ChatRequest, ChatRunner
    from pipelines.caption import ProgressPrinter

    folder = tmp_path / "progress"
    sink = io.StringIO()
    with FakeOpenAIServer(retry_after_s=3) as server, ProgressPrinter(folder, every_s=1.0, out=sink) as printer:
        ep = OpenAIEndpoint(base_url=server.base_url, model="m", api_key="k", max_retries=2, announce_wait_s=1.0)
        runner = ChatRunner(ep, progress=ChatProgress("expand", folder=str(folder)), on_wait=None)
        results = runner.run([ChatRequest(f"r{i}", [{"role": "user", "content": f"{m} a cat {i}"}], 20)
                              for i, m in enumerate(["@429", "", ""])])
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    waiting = [line for line in printer.lines if "waiting" in line]
    assert waiting and "expand:" in waiting[0] and "HTTP 429, Retry-After 3 s" in waiting[0]
    assert sink.getvalue().count("[caption]") == len(printer.lines)


def test_caption_cli_without_expand_options_or_a_model_fails_before_work(tmp_path, capsys, monkeypatch):
    """No --expand-* options: expansion is off (said once), never a crash inside a Ray worker; a backend that
    cannot work is one line on stderr, exit 2, and the output folder is not created."""
    for var in ("TESSERA_LLM_MODEL", "TESSERA_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    src = tmp_path / "in"
    write_clip_shards(str(src), ["red"])
    out = tmp_path / "out"
    assert cli(["--input", str(src), "--output", str(out), "--backend", "openai"]) == 2
    err = capsys.readouterr().err
    assert "expansion is off" in err and "no model: pass --model" in err and "Traceback" not in err
    assert not out.exists()
    with FakeOpenAIServer(models={"fake-vlm"}) as server:
        assert cli(["--input", str(src), "--output", str(out), "--backend", "openai", "--model", "nope",
                    "--base-url", server.base_url]) == 2
        assert "HTTP 404" in capsys.readouterr().err and not out.exists()
        assert cli(["--input", str(src), "--output", str(out), "--backend", "openai", "--model", "fake-vlm",
                    "--base-url", server.base_url, "--expand-model", "x", "--expand-api-key-env", "UNSET_VAR_1"]) == 2
        assert "$UNSET_VAR_1 (named by --expand-api-key-env) is not set" in capsys.readouterr().err
        assert len(server.seen) == 1 and server.seen[0].probe  # the 404 probe; static checks come before probes


@pytest.mark.parametrize("flags, env, want", [([], None, {"address": "local", "num_cpus": 2}),
                                              ([], "10.1.2.3:6379", {"address": "10.1.2.3:6379"}),
                                              (["--ray-address", "auto"], None, {"address": "auto"})])
def test_ray_is_private_unless_a_cluster_is_named(tmp_path, monkeypatch, init_calls, flags, env, want):
    """No ``--ray-address`` and no ``$RAY_ADDRESS``: a private Ray, never the cluster a ``ray start`` (live or
    crashed) left named in /tmp/ray; a named cluster is joined without local sizes (Ray refuses ``num_cpus``)."""
    calls = init_calls
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    src = tmp_path / "in"
    write_clip_shards(str(src), ["red"])
    with pytest.raises(RayInitStopped):
        cli(["--input", str(src), "--output", str(tmp_path / "out"), "--backend", "source", "--expand-backend", "off",
             "--num-cpus", "2", *flags])
    assert len(calls) == 1 and {k: calls[0].get(k) for k in ("address", "num_cpus")} == {"num_cpus": None} | want
