"""Expansion throughput against the loopback server: latency L per request, concurrency C.

An ideal client with C requests in flight completes C/L requests per second; the target is >= 0.9 x C/L. Each
(L, C) pass expands N distinct texts (no cache, so every one is a real HTTP request through the unmodified
``openai`` client, template building and output validation included) and prints a Markdown table row.

    .venv/bin/python benchmarks/bench_expand.py --grid 0.25:8,0.5:32,1:64,2:128 --waves 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _serve(latency_s: float, conn, stop) -> None:
    """Child process: the loopback server, so that it does not share the client's interpreter (GIL)."""
    from openai_server import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=latency_s, max_lifetime_s=600) as server:
        conn.send(server.base_url)
        stop.wait(600)
    conn.send(time.process_time())  # the server's CPU seconds, for the cost per request


def run(latency_s: float, concurrency: int, n: int) -> dict:
    """One pass; returns requests/s and its ratio to the ideal C/L."""
    import multiprocessing as mp

    from caption.chat import OpenAIEndpoint
    from caption.expand import ExpandConfig, Expander

    texts = [f"a paper boat number {i} drifting down a rain gutter" for i in range(n + concurrency)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(latency_s, child, stop), daemon=True)
    proc.start()
    try:
        ep = OpenAIEndpoint(base_url=parent.recv(), model="fake", api_key="bench", concurrency=concurrency,
                            timeout_s=30, max_retries=0)
        expander = Expander(ExpandConfig(endpoint=ep, relevance=None))  # the chat client's throughput only
        expander.expand(texts[n:])  # warm-up: interpreter, client, server
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = expander.expand(texts[:n])
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        stop.set()
        server_cpu = parent.recv() if parent.poll(15) else float("nan")
        proc.join(10)
    ok = sum(r.status == "ok" for r in results)
    ideal = concurrency / latency_s
    return {"L": latency_s, "C": concurrency, "n": n, "ok": ok, "seconds": dt, "rps": n / dt, "ideal": ideal,
            "ratio": n / dt / ideal, "client_ms": 1000 * cpu / n, "server_ms": 1000 * server_cpu / (2 * n)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="0.25:8,0.5:32,1:64,2:128,0.1:16", help="comma list of L_seconds:C")
    ap.add_argument("--waves", type=int, default=24, help="requests per pass = waves x C (steady state)")
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| L (s) | C | requests | ok | seconds | req/s | C/L | ratio | client CPU ms/req | server CPU ms/req |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for item in args.grid.split(","):
        lat, conc = item.split(":")
        r = run(float(lat), int(conc), args.waves * int(conc))
        print(f"| {r['L']:g} | {r['C']} | {r['n']} | {r['ok']} | {r['seconds']:.2f} | {r['rps']:.1f} | "
              f"{r['ideal']:.0f} | {r['ratio']:.3f} | {r['client_ms']:.2f} | {r['server_ms']:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
