"""``server.client_processes``: the cycle sent from N client processes, against the fake server's log.

A real fake server process on 127.0.0.1 (``lem_backend_server.testing``), real worker processes
(``lem_backend_server.fanout``) reached through the backend's hooks, as an experiment does.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from conftest import served

from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_server import fanout, plugin
from lem_backend_server.testing import running

#: How far (ms) a client stamp may lag the server's send on this shared machine: the loop's wake-up latency.
LAG_MS = 25.0


def _served(
    make_config: Any, tiny_llama: Path, tmp_path: Path, n: int, *args: str, timeout_s: float = 5.0, **tables: Any
) -> AbstractContextManager[tuple[LoadedModel, Any, Path]]:
    server = {"request_timeout_s": timeout_s, "client_processes": n}
    return served(make_config, tiny_llama, tmp_path / f"sent-{n}.json", args, server, **tables)


def _requests(n: int, arrivals: list[int] | None = None) -> list[Request]:
    return [Request(i, f"prompt {i}", 2, arrival_ns=None if arrivals is None else arrivals[i]) for i in range(n)]


def _run(model: LoadedModel, config: Any, reqs: list[Request]) -> list[TokenEvent]:
    stream = plugin.generate_stream(model=model, requests=reqs, params=config.generation, config=config)
    assert stream is not None
    return list(stream)


def _summary(events: list[TokenEvent]) -> dict[int, tuple[int, int, str | None]]:
    """Per request: tokens, finished events, error."""
    out: dict[int, tuple[int, int, str | None]] = {}
    for e in events:
        n, fin, err = out.get(e.request_id, (0, 0, None))
        out[e.request_id] = (n + e.n_tokens, fin + e.finished, e.error if e.finished else err)
    return out


def test_split_gives_the_remainder_to_the_first_processes() -> None:
    assert fanout.split(7, 3) == [3, 2, 2]
    assert fanout.split(2, 3) == [1, 1, 0]
    reqs = _requests(5, [50, 10, 40, 20, 30])
    assert [[r.id for r in share] for share in fanout.deal(reqs, 2)] == [[1, 4, 0], [3, 2]]


def test_two_processes_give_what_one_gives(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    # 13 requests at concurrency 5 (3 + 2 over the two processes): the same counts, one end per request.
    traffic = {"mode": "concurrency", "concurrency": 5}
    results = {}
    for n in (1, 2):
        with _served(make_config, tiny_llama, tmp_path, n, "--itl-ms", "2", traffic=traffic) as (model, config, log):
            assert model.info["client_processes"] == n
            events = _run(model, config, _requests(13))
            if n == 2:
                assert model.handle.pool is not None and len({w.process.pid for w in model.handle.pool.workers}) == 2
                assert all(w.process.pid != os.getpid() for w in model.handle.pool.workers)
        results[n] = _summary(events)
        sent = {e["prompt"]: e["sent_ns"] for e in json.loads(log.read_text())}
        # Every token's stamp (taken in the worker) is after the server sent it, and soon after: the workers'
        # monotonic clock is the server's and the parent's.
        stamps: dict[int, list[int]] = {}
        for e in events:
            stamps.setdefault(e.request_id, []).extend([e.t_ns] * e.n_tokens)
        for rid, got in stamps.items():
            lags = [(g - s) / 1e6 for g, s in zip(got, sent[f"prompt {rid}"], strict=True)]
            assert all(0 < lag < LAG_MS for lag in lags), (n, rid, lags)
    assert results[1] == results[2] == {i: (8, 1, None) for i in range(13)}


def test_concurrency_below_the_processes_uses_fewer(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    # Concurrency 1 over 3 processes: one process serves every request, one at a time.
    traffic = {"mode": "concurrency", "concurrency": 1}
    with _served(make_config, tiny_llama, tmp_path, 3, "--itl-ms", "1", traffic=traffic) as (model, config, log):
        events = _run(model, config, _requests(4))
    assert _summary(events) == {i: (8, 1, None) for i in range(4)}
    spans = sorted((e["received_ns"], e["sent_ns"][-1]) for e in json.loads(log.read_text()))
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))  # never two at once


def test_open_loop_arrivals_are_kept_by_each_process(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    traffic = {"mode": "poisson", "rate": 50.0}
    with _served(make_config, tiny_llama, tmp_path, 2, "--itl-ms", "2", traffic=traffic) as (model, config, log):
        t0 = time.monotonic_ns() + 100_000_000
        arrivals = [t0 + i * 15_000_000 for i in range(10)]
        events = _run(model, config, _requests(10, arrivals))
    assert _summary(events) == {i: (8, 1, None) for i in range(10)}
    received = {e["prompt"]: e["received_ns"] for e in json.loads(log.read_text())}
    delays = [(received[f"prompt {i}"] - arrivals[i]) / 1e6 for i in range(10)]
    assert all(0 <= d < LAG_MS for d in delays), delays  # never before its arrival, and soon after


def test_an_http_error_in_a_process_fails_its_request(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    with _served(make_config, tiny_llama, tmp_path, 2, "--status", "503", "--body", "busy") as (model, config, _):
        events = _run(model, config, _requests(4))
    assert _summary(events) == {i: (0, 1, "HTTP 503: busy") for i in range(4)}


def test_a_dead_process_fails_its_requests_and_is_replaced(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    traffic = {"mode": "concurrency", "concurrency": 4}
    with _served(make_config, tiny_llama, tmp_path, 2, "--itl-ms", "100", traffic=traffic) as (model, config, _):
        pool = model.handle.pool
        assert pool is not None
        victim = pool.workers[0].process
        stream = plugin.generate_stream(model=model, requests=_requests(4), params=config.generation, config=config)
        assert stream is not None
        events = [next(stream)]  # serving has started
        os.kill(victim.pid, signal.SIGKILL)
        events += list(stream)
        summary = _summary(events)
        # Worker 0 had requests 0 and 2 (round-robin); they fail with the reason, worker 1's finish.
        assert summary[1] == summary[3] == (8, 1, None)
        for rid in (0, 2):
            tokens, ends, error = summary[rid]
            assert ends == 1 and tokens < 8 and error == "client process 0 died (exit -9)", summary
        # The next cycle runs on a fresh pool.
        assert _summary(_run(model, config, _requests(4))) == {i: (8, 1, None) for i in range(4)}
        assert victim.pid not in {w.process.pid for w in pool.workers}


def test_a_silent_process_is_given_up_within_bounds(
    make_config: Any, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped (SIGSTOP) worker is alive but says nothing: after request_timeout_s (+ the margin, 0 here)
    # its requests fail with the reason, instead of the cycle hanging; the other worker's request finishes.
    monkeypatch.setattr(fanout, "SILENCE_MARGIN_S", 0.0)
    traffic = {"mode": "concurrency", "concurrency": 2}
    with _served(make_config, tiny_llama, tmp_path, 2, "--itl-ms", "50", timeout_s=1.5, traffic=traffic) as (
        model,
        config,
        _,
    ):
        pool = model.handle.pool
        assert pool is not None
        stream = plugin.generate_stream(model=model, requests=_requests(2), params=config.generation, config=config)
        assert stream is not None
        os.kill(pool.workers[0].process.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        summary = _summary(list(stream))
        assert time.monotonic() - t0 < 10
        assert summary == {0: (0, 1, "client process 0 was silent for 1.5 s and was stopped"), 1: (8, 1, None)}


def test_stopping_early_stops_the_processes(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    traffic = {"mode": "concurrency", "concurrency": 4}
    with _served(make_config, tiny_llama, tmp_path, 2, "--itl-ms", "100", traffic=traffic) as (model, config, _):
        pool = model.handle.pool
        assert pool is not None
        procs = [w.process for w in pool.workers]
        stream = plugin.generate_stream(model=model, requests=_requests(4), params=config.generation, config=config)
        assert stream is not None
        next(stream)
        stream.close()  # what the runner does on Ctrl-C or an error
        assert not any(p.is_alive() for p in procs)
        assert _summary(_run(model, config, _requests(2))) == {i: (8, 1, None) for i in range(2)}
        fresh = [w.process for w in pool.workers]
        assert len(fresh) == 2 and all(p.is_alive() for p in fresh)
    assert not any(p.is_alive() for p in fresh)  # closing the model stopped them


def test_a_refused_connection_in_a_process_ends_the_cycle(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    # The server is gone after the model loaded: nothing listens at its address, so each worker's connection is
    # refused. That is an engine failure, as with one process: the cycle ends at once with one error naming the
    # server and the client process (not a request timeout per request), and no worker outlives it.
    from lem.errors import BackendError

    with running(log=tmp_path / "sent.json") as url:
        config = make_config(str(tiny_llama), {"url": url, "request_timeout_s": 30.0, "client_processes": 2})
        model = plugin.load_model(backend="server", config=config)
        assert model is not None
    try:
        pool = model.handle.pool
        assert pool is not None and pool.alive
        procs = [w.process for w in pool.workers]
        for _ in range(2):  # the next cycle starts a fresh pool, which meets the same refusal
            t0 = time.monotonic()
            with pytest.raises(BackendError) as err:
                _run(model, config, _requests(4))
            assert time.monotonic() - t0 < 20  # well within request_timeout_s (30 s)
            message = str(err.value)
            assert message.startswith(f"the server at {url} stopped answering: ConnectionError: client process ")
            assert "ClientConnectorError" in message and "Connect call failed" in message, message
            assert not pool.workers and not any(p.is_alive() for p in procs)
    finally:
        model.close()
    assert not any(p.is_alive() for p in procs)


@pytest.mark.parametrize("value", [0, 65])
def test_client_processes_out_of_bounds_is_refused(make_config: Any, tiny_llama: Path, value: int) -> None:
    from lem.errors import LemError

    with pytest.raises(LemError, match=rf"server.client_processes = {value}.*in \[1, 64\]"):
        make_config(str(tiny_llama), {"url": "http://127.0.0.1:9", "client_processes": value})


def test_lem_run_with_two_client_processes(tiny_llama: Path, tmp_path: Path) -> None:
    # The real CLI in a subprocess: workers are spawned from lem's worker, serve warm-up and two cycles,
    # and leave no process behind (lem's worker reports any, multiprocessing's resource tracker included).
    import subprocess
    import sys

    with running("--itl-ms", "2", log=tmp_path / "sent.json") as url:
        (tmp_path / "exp.toml").write_text(
            f'model = "{tiny_llama}"\nbackend = "server"\n[dataset]\nnum_prompts = 12\ninput_length = 8\n'
            "[generation]\nmax_output_tokens = 8\nignore_eos = true\n"
            '[traffic]\nmode = "concurrency"\nconcurrency = 3\n'
            '[measurement]\nenergy_meter = "none"\ncycles = 2\nwarmup_requests = 2\nidle_seconds = 0\n'
            f'[server]\nurl = "{url}"\nclient_processes = 2\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "lem", "run", "exp.toml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("12/12 requests") == 2, done.stderr
    assert "behind" not in done.stderr, done.stderr
    warm = re.search(r"warm-up .* (\d+)/\1 requests", done.stderr)
    assert warm is not None, done.stderr
    sent = json.loads((tmp_path / "sent.json").read_text())
    assert len(sent) == int(warm.group(1)) + 2 * 12 and all(len(e["sent_ns"]) == 8 for e in sent)


@pytest.mark.parametrize("where", ["--in-process", "--quiet"], ids=["in-process", "worker-process"])
def test_ctrl_c_during_a_cycle_leaves_no_client_process(tiny_llama: Path, tmp_path: Path, where: str) -> None:
    # The real CLI in its own process group, as a terminal runs it; Ctrl-C reaches every process of the group
    # (lem and its client workers) while the workers stream. lem exits as interrupted, with no traceback from
    # any process, and none of the workers outlives it.
    import subprocess
    import sys

    import psutil

    with running("--itl-ms", "20", log=tmp_path / "sent.json") as url:
        (tmp_path / "exp.toml").write_text(
            f'model = "{tiny_llama}"\nbackend = "server"\n[dataset]\nnum_prompts = 8\ninput_length = 8\n'
            "[generation]\nmax_output_tokens = 500\nignore_eos = true\n"
            '[measurement]\nenergy_meter = "none"\ncycles = 2\nwarmup_requests = 0\nidle_seconds = 0\n'
            f'[server]\nurl = "{url}"\nclient_processes = 2\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "lem", "run", "exp.toml", where, "--no-report"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        workers: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 120
            while len(workers) < 2:  # the pool is up: two spawned client processes
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                children = psutil.Process(proc.pid).children(recursive=True)  # lem's worker's, or lem's own
                workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
                time.sleep(0.1)
            time.sleep(2.0)  # into the cycle: 8 requests of 500 tokens at 20 ms take 10 s
            os.killpg(proc.pid, signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.pid for p in alive]
