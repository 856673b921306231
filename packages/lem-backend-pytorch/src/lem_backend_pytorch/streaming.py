"""``generate_stream``: batches through ``model.generate`` on a worker thread, one TokenEvent per sequence per step.

``generate`` runs on the model's long-lived :class:`GenerateThread`, batch after
batch; messages reach the caller's iterator through a queue as they happen.

A :class:`StepStreamer` (a transformers ``BaseStreamer``) is handed to
``generate``; transformers calls its ``put()`` first with the prompt ids, then
once per decode step with the new token of every row (shape ``(batch,)``; an
assisted step may add several tokens per row, shape ``(batch, n)``). ``put()``
only takes ``time.monotonic_ns()`` and queues the tensor, so the timestamp is
when the token reached the host and the decode loop is not slowed. The
consumer side (the iterator returned to the runner) turns each step into
events, counting tokens exactly: a row's tokens stop at its first EOS (counted)
unless ``ignore_eos``, and the pads transformers writes into finished rows are
never counted.

Beam search cannot stream (transformers refuses a streamer with ``num_beams > 1``):
each request then gets one event with all its tokens when its batch ends, and
``validate_config`` warns that TTFT and ITL are not per-token then.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from lem.config import ExperimentConfig, GenerationConfig
from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_pytorch.batching import batches
from lem_backend_pytorch.decoding import build_generation_config
from lem_backend_pytorch.loader import TorchModel


class _Cancelled(Exception):
    """Raised inside ``generate`` (from ``put``) when the consumer stopped reading."""


class StepStreamer(BaseStreamer):  # type: ignore[misc]
    """Timestamps every decode step and hands it to a queue; skips the prompt ids."""

    def __init__(self, sink: Callable[[tuple[str, int, Any]], None], cancel: threading.Event) -> None:
        self.sink = sink
        self.cancel = cancel
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        """Called by ``generate``: first the prompt ids, then the new token(s) of each row."""
        t = time.monotonic_ns()
        if self.cancel.is_set():
            raise _Cancelled
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sink(("step", t, value))

    def end(self) -> None:
        """Called by ``generate`` when it is done; the worker reports the end itself."""


def batch_size_for(config: ExperimentConfig) -> int:
    """Rows per batch: the concurrency under closed-loop traffic, else ``batching.batch_size``."""
    if config.traffic.mode == "concurrency" and config.traffic.concurrency:
        return config.traffic.concurrency
    return config.batching.batch_size


def _token_ids(handle: TorchModel, request: Request) -> list[int]:
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    ids: list[int] = handle.tokenizer(request.prompt)["input_ids"]
    return ids


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """``input_ids`` and ``attention_mask`` of a left-padded batch."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


Message = tuple[str, int, Any]


def _run(
    handle: TorchModel,
    requests: Sequence[Request],
    params: GenerationConfig,
    config: ExperimentConfig,
    sink: Callable[[Message], None],
    cancel: threading.Event,
) -> Iterator[None]:
    """Serve the batches one by one, reporting ``(kind, t_ns, payload)`` messages to ``sink``; yields after each."""
    generation_config = build_generation_config(params, handle.eos_token_ids, handle.pad_token_id, handle.options)
    torch.manual_seed(config.seed)
    extra = {"assistant_model": handle.assistant} if handle.assistant is not None else {}
    streaming = params.num_beams == 1
    for batch in batches(requests, config.batching, batch_size_for(config), params.max_output_tokens):
        if cancel.is_set():
            return
        sink(("batch", time.monotonic_ns(), batch))
        rows = [_token_ids(handle, r) for r in batch]
        input_ids, attention_mask = left_padded(rows, handle.pad_token_id, handle.device)
        with torch.inference_mode():
            result = handle.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                streamer=StepStreamer(sink, cancel) if streaming else None,
                **extra,
            )
        final = None if streaming else result[:, input_ids.shape[1] :].cpu()
        sink(("done", time.monotonic_ns(), final))
        yield


def _worker(
    handle: TorchModel,
    requests: Sequence[Request],
    params: GenerationConfig,
    config: ExperimentConfig,
    out: queue.SimpleQueue[Message],
    cancel: threading.Event,
) -> None:
    try:
        for _ in _run(handle, requests, params, config, out.put, cancel):
            pass
    except _Cancelled:
        pass
    except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
        out.put(("error", 0, exc))
    finally:
        out.put(("end", 0, None))


class _Rows:
    """Per-row bookkeeping of the running batch: exact token counts, EOS, finished flags."""

    def __init__(self, batch: list[Request], params: GenerationConfig, eos: tuple[int, ...]) -> None:
        self.ids = [r.id for r in batch]
        self.done = [False] * len(batch)
        self.count = [0] * len(batch)
        self.max_new = params.max_output_tokens
        self.eos = frozenset(() if params.ignore_eos else eos)

    def take(self, i: int, tokens: list[int], t_ns: int) -> TokenEvent | None:
        if self.done[i]:
            return None  # pads written into a finished row
        kept: list[int] = []
        for tok in tokens:
            kept.append(tok)
            if tok in self.eos or self.count[i] + len(kept) >= self.max_new:
                self.done[i] = True
                break
        self.count[i] += len(kept)
        return TokenEvent(self.ids[i], t_ns, len(kept), self.done[i], tuple(kept))

    def step(self, value: Any, t_ns: int) -> Iterator[TokenEvent]:
        per_row = value.tolist()
        for i, tokens in enumerate(per_row):
            event = self.take(i, tokens if isinstance(tokens, list) else [tokens], t_ns)
            if event is not None:
                yield event

    def finish(self, final: Any, t_ns: int) -> Iterator[TokenEvent]:
        if final is not None:  # beam search: everything at once
            for i, tokens in enumerate(final.tolist()):
                event = self.take(i, tokens, t_ns)
                if event is not None and not event.finished:
                    event = TokenEvent(event.request_id, t_ns, event.n_tokens, True, event.token_ids)
                if event is not None:
                    self.done[i] = True
                    yield event
        for i, done in enumerate(self.done):
            if not done:  # generation stopped for another reason (a stopping criterion of the model)
                self.done[i] = True
                yield TokenEvent(self.ids[i], t_ns, 0, True)


class GenerateThread:
    """One long-lived thread per model that runs ``generate`` jobs, one at a time.

    Long-lived on purpose: ``generate`` launched from a *fresh* thread ran ~3x slower
    on an H100 (8B, batch 1, torch 2.11: 10 vs 27-40 tok/s), from a reused thread as
    fast as from the main thread. It also keeps torch.compile's CUDA graphs, captured
    during the warm-up in ``load_model``, in the thread that replays them.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="lem-pytorch-generate", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` after the jobs already submitted."""
        self.jobs.put(job)

    def stop(self) -> None:
        """Let the thread end after its current job."""
        self.jobs.put(None)


def stream(model: LoadedModel, requests: Sequence[Request], params: GenerationConfig,
           config: ExperimentConfig) -> Iterator[TokenEvent]:
    """Start serving ``requests`` on the model's generate thread; return the iterator of their events."""
    handle: TorchModel = model.handle
    if handle.thread is None:
        handle.thread = GenerateThread()
    out: queue.SimpleQueue[Message] = queue.SimpleQueue()
    cancel = threading.Event()
    handle.thread.submit(lambda: _worker(handle, requests, params, config, out, cancel))
    return _queued_events(out, cancel, _Converter(params, handle.eos_token_ids))


class _Converter:
    """Turns ``(kind, t_ns, payload)`` messages into token events, batch by batch."""

    def __init__(self, params: GenerationConfig, eos: tuple[int, ...]) -> None:
        self.params = params
        self.eos = eos
        self.rows: _Rows | None = None

    def __call__(self, message: Message) -> Iterator[TokenEvent]:
        kind, t_ns, payload = message
        if kind == "batch":
            self.rows = _Rows(payload, self.params, self.eos)
            for r in payload:
                yield TokenEvent(r.id, t_ns, 0)  # submitted now
        elif kind == "step" and self.rows is not None:
            yield from self.rows.step(payload, t_ns)
        elif kind == "done" and self.rows is not None:
            yield from self.rows.finish(payload, t_ns)


def _queued_events(out: queue.SimpleQueue[Message], cancel: threading.Event, convert: _Converter
                   ) -> Iterator[TokenEvent]:
    ended = False
    try:
        while True:
            message = out.get()
            if message[0] == "end":
                ended = True
                return
            if message[0] == "error":
                raise message[2]
            yield from convert(message)
    finally:
        # Stopped early (or failed): stop generate at its next step and wait for the job to
        # end, so that the next call never overlaps this one on the device.
        cancel.set()
        while not ended:
            ended = out.get()[0] == "end"


def compile_warmup(model: LoadedModel, config: ExperimentConfig) -> float:
    """Run the compiled shapes twice (compile, then CUDA-graph capture) before any measurement; seconds taken."""
    import attrs

    d = config.dataset
    length = d.max_input_tokens or d.input_length_max or d.input_length
    vocab = int(model.model_config.get("vocab_size") or 1000)
    size = batch_size_for(config)
    requests = [
        Request(id=i, prompt="", input_tokens=length, prompt_token_ids=tuple((7 * i + j) % (vocab - 10) + 10
                                                                             for j in range(length)))
        for i in range(size)
    ]
    params = attrs.evolve(config.generation, ignore_eos=True)
    warm = attrs.evolve(config, traffic=attrs.evolve(config.traffic, mode="offline"),
                        batching=attrs.evolve(config.batching, strategy="static", batch_size=size))
    start = time.perf_counter()
    for _ in range(2):
        for _event in stream(model, requests, params, warm):
            pass
    model.synchronize()
    return round(time.perf_counter() - start, 3)
