"""``generate_stream``: batches through ``model.generate``, one TokenEvent per sequence per step.

``generate`` runs on the calling thread, batch after batch. Each decode step is
timestamped the moment transformers hands it over, and the batch's events are
handed to the caller when the batch ends. The timings are the same as if the
events were delivered live, and the decode loop never shares the interpreter
with a consumer thread: a version with a generate thread and a queue measured
a few percent below a bare ``generate`` on an H100, and a fresh thread per call
ran ~3x slower.

A :class:`StepStreamer` (a transformers ``BaseStreamer``) is handed to
``generate``; transformers calls its ``put()`` first with the prompt ids, then
once per decode step with the new token of every row (shape ``(batch,)``; an
assisted step may add several tokens per row, shape ``(batch, n)``). ``put()``
only takes ``time.monotonic_ns()`` and keeps the (host) tensor, so the timestamp
is when the token reached the host and the decode loop is not slowed. After the
batch, each step is turned into events, counting tokens exactly: a row's tokens stop at its first EOS (counted)
unless ``ignore_eos``, and the pads transformers writes into finished rows are
never counted.

Beam search cannot stream (transformers refuses a streamer with ``num_beams > 1``):
each request then gets one event with all its tokens when its batch ends, and
``validate_config`` warns that TTFT and ITL are not per-token then.
"""

from __future__ import annotations

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

#: ``(kind, t_ns, payload)``: "batch" (submitted), "step" (one decode step) or "done".
Message = tuple[str, int, Any]


class StepStreamer(BaseStreamer):  # type: ignore[misc]
    """Timestamps every decode step and hands it to ``sink``; skips the prompt ids."""

    def __init__(self, sink: Callable[[Message], None]) -> None:
        self.sink = sink
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        """Called by ``generate``: first the prompt ids, then the new token(s) of each row."""
        t = time.monotonic_ns()
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sink(("step", t, value))

    def end(self) -> None:
        """Called by ``generate`` when it is done; :func:`_run` reports the end of the batch itself."""


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


def _run(
    handle: TorchModel,
    requests: Sequence[Request],
    params: GenerationConfig,
    config: ExperimentConfig,
    sink: Callable[[Message], None],
) -> Iterator[None]:
    """Serve the batches one by one, reporting ``(kind, t_ns, payload)`` messages to ``sink``; yields after each."""
    generation_config = build_generation_config(params, handle.eos_token_ids, handle.pad_token_id, handle.options)
    torch.manual_seed(config.seed)
    extra = {"assistant_model": handle.assistant} if handle.assistant is not None else {}
    streaming = params.num_beams == 1
    for batch in batches(requests, config.batching, batch_size_for(config), params.max_output_tokens):
        sink(("batch", time.monotonic_ns(), batch))
        rows = [_token_ids(handle, r) for r in batch]
        input_ids, attention_mask = left_padded(rows, handle.pad_token_id, handle.device)
        with torch.inference_mode():
            result = handle.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                streamer=StepStreamer(sink) if streaming else None,
                **extra,
            )
        final = None if streaming else result[:, input_ids.shape[1] :].cpu()
        sink(("done", time.monotonic_ns(), final))
        yield


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

    def step(self, value: Any, t_ns: int) -> list[TokenEvent]:
        per_row = value.tolist()
        if value.dim() == 2:  # assisted decoding: possibly several tokens per row
            events = (self.take(i, tokens, t_ns) for i, tokens in enumerate(per_row))
            return [e for e in events if e is not None]
        # One token per row, the usual step: inlined, as this runs for every token of the batch.
        out: list[TokenEvent] = []
        done, count, ids, eos, max_new = self.done, self.count, self.ids, self.eos, self.max_new
        for i, tok in enumerate(per_row):
            if done[i]:
                continue  # a pad written into a finished row
            count[i] += 1
            last = tok in eos or count[i] >= max_new
            done[i] = last
            out.append(TokenEvent(ids[i], t_ns, 1, last, (tok,)))
        return out

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


def stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent]:
    """Serve ``requests`` batch by batch on this thread; yield each batch's events when it ends."""
    handle: TorchModel = model.handle
    convert = _Converter(params, handle.eos_token_ids)
    messages: list[Message] = []
    for _ in _run(handle, requests, params, config, messages.append):
        for message in messages:
            yield from convert(message)
        messages.clear()


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


def compile_warmup(model: LoadedModel, config: ExperimentConfig) -> float:
    """Run the compiled shapes twice (compile, then CUDA-graph capture) before any measurement; seconds taken."""
    import attrs

    d = config.dataset
    length = d.max_input_tokens or d.input_length_max or d.input_length
    vocab = int(model.model_config.get("vocab_size") or 1000)
    size = batch_size_for(config)
    requests = [
        Request(
            id=i,
            prompt="",
            input_tokens=length,
            prompt_token_ids=tuple((7 * i + j) % (vocab - 10) + 10 for j in range(length)),
        )
        for i in range(size)
    ]
    params = attrs.evolve(config.generation, ignore_eos=True)
    warm = attrs.evolve(
        config,
        traffic=attrs.evolve(config.traffic, mode="offline"),
        batching=attrs.evolve(config.batching, strategy="static", batch_size=size),
    )
    start = time.perf_counter()
    for _ in range(2):
        for _event in stream(model, requests, params, warm):
            pass
    model.synchronize()
    return round(time.perf_counter() - start, 3)
