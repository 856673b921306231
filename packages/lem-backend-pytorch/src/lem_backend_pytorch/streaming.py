"""``generate_stream``: batches through ``model.generate``, one TokenEvent per sequence per step.

``generate`` runs on the calling thread, batch after batch. Each decode step is
timestamped the moment transformers hands it over, and the batch's events are
handed to the caller when the batch ends. The timings are the same as if the
events were delivered live, and the decode loop never shares the interpreter
with a consumer thread: a version with a generate thread and a queue measured
a few percent below a bare ``generate`` on an H100, and a fresh thread per call
ran ~3x slower.

A :class:`StepClock` (a transformers ``StoppingCriteria`` that never stops
anything) is handed to ``generate``, which calls it once per decode step right
after the step's token(s) were appended. It notes the sequence length and
stamps the step without waiting for the device: on a GPU it records a CUDA
event on the stream (read after the batch, mapped to ``time.monotonic_ns()``
through an origin event synchronised before ``generate``), on the CPU it reads
``time.monotonic_ns()`` (the CPU computes synchronously, so that is when the
token exists). The tokens themselves are read once from ``generate``'s output
when the batch ends. Each step's events carry the instant its token was ready
on the device.

Why not a streamer: transformers copies every step's tokens to the host for
any ``BaseStreamer`` (``streamer.put(tokens.cpu())``). Measured on an H200
(random Llama-3.1-8B, bf16, CUDA-graph decode, 12 repeats, rotating order):
a plain ``generate`` with a streamer that does nothing ran at 0.980 [0.967,
0.994] of plain ``generate`` at batch 8 (1.002 [0.958, 1.047] at batch 1),
while lem's own work on top of that was 1.009 [0.989, 1.031], and lem's work
outside ``generate`` 0.13-0.23% of the run. So the cost of per-step streaming
was transformers' streaming path itself, a device-to-host copy per step, not
lem's Python; the clock removes it and keeps a timestamp per step.

After the batch, each step is turned into events, counting tokens exactly: a
row's tokens stop at its first EOS (counted) unless ``ignore_eos``, and the
pads transformers writes into finished rows are never counted.

Beam search cannot stream (transformers refuses a streamer with ``num_beams > 1``):
each request then gets one event with all its tokens when its batch ends, and
``validate_config`` warns that TTFT and ITL are not per-token then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import attrs
import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from lem.config import ExperimentConfig, GenerationConfig
from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_pytorch.batching import batch_size_for, batches
from lem_backend_pytorch.decoding import build_generation_config
from lem_backend_pytorch.model import TorchModel
from lem_backend_pytorch.tp import leader as tp

#: ``(kind, t_ns, payload)``: "batch" (submitted), "step" (one decode step: a token per row, or a list
#: per row) or "done".
Message = tuple[str, int, Any]


class StepClock(StoppingCriteria):  # type: ignore[misc]
    """Stamps every decode step without a device sync; never stops generation (see the module docstring)."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        #: Sequence length after each step (an assisted step may add several tokens).
        self.lengths: list[int] = []
        self.marks: list[Any] = []  # CUDA events, or monotonic ns on the CPU
        self.never: Any = None
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record(stream)
            self.origin.synchronize()
            self.origin_ns = time.monotonic_ns()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        """Called by ``generate`` after each step's tokens were appended to ``input_ids``."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self.marks.append(event)
        else:
            self.marks.append(time.monotonic_ns())
        self.lengths.append(input_ids.shape[1])
        if self.never is None or self.never.shape[0] != input_ids.shape[0]:
            self.never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self.never

    def stamps_ns(self) -> list[int]:
        """``time.monotonic_ns()`` of every step (on a GPU: when the device reached the step's end)."""
        if not self.cuda:
            return list(self.marks)
        if self.marks:
            self.marks[-1].synchronize()
        return [self.origin_ns + round(self.origin.elapsed_time(e) * 1e6) for e in self.marks]


def steps(clock: StepClock, new_tokens: list[list[int]], prompt_len: int) -> Iterator[tuple[int, list[Any]]]:
    """``(t_ns, tokens)`` per step: one token per row, or a list per row where a step added several."""
    done = 0
    width = len(new_tokens[0]) if new_tokens else 0
    for t_ns, length in zip(clock.stamps_ns(), clock.lengths, strict=True):
        upto = min(length - prompt_len, width)  # a step transformers undid afterwards has no tokens
        if upto <= done:
            continue
        if upto - done == 1:
            yield t_ns, [row[done] for row in new_tokens]
        else:
            yield t_ns, [row[done:upto] for row in new_tokens]
        done = upto


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


def _generate(handle: TorchModel) -> Callable[..., Any]:
    """``model.generate``, or under tensor parallelism the same call on every rank (:func:`.tp.leader.generate`)."""
    if handle.ranks is None:
        return handle.model.generate
    return partial(tp.generate, handle.ranks, handle.model)


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
        clock = StepClock(input_ids.device) if streaming else None
        with torch.inference_mode():
            result = _generate(handle)(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                stopping_criteria=StoppingCriteriaList([clock]) if clock is not None else None,
                **extra,
            )
        new_tokens = result[:, input_ids.shape[1] :].tolist()
        if clock is not None:
            for t_ns, tokens in steps(clock, new_tokens, input_ids.shape[1]):
                sink(("step", t_ns, tokens))
        sink(("done", time.monotonic_ns(), None if streaming else new_tokens))
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

    def step(self, per_row: list[Any], t_ns: int) -> list[TokenEvent]:
        if per_row and isinstance(per_row[0], list):  # assisted decoding: possibly several tokens per row
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
            for i, tokens in enumerate(final):
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
