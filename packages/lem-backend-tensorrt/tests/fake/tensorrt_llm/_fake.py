"""The FAKE TensorRT-LLM's classes (see ``tensorrt_llm/__init__.py`` for why it exists)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
import threading
from pathlib import Path
from typing import Any

import lem_trt_surface as surface_check

from tensorrt_llm.executor.utils import RequestError

SURFACE = surface_check.load()


def _script() -> dict[str, Any]:
    return dict(json.loads(os.environ.get("LEM_FAKE_TRTLLM") or "{}"))


def _log(event: str, **fields: Any) -> None:
    path = _script().get("log")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


def _checked(cls: str, kwargs: dict[str, Any]) -> None:
    problems = surface_check.check_kwargs(SURFACE, cls, kwargs)
    if problems:
        raise TypeError("; ".join(problems))


class _Config:
    surface_class = ""

    def __init__(self, **kwargs: Any) -> None:
        _checked(self.surface_class, kwargs)
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


class KvCacheConfig(_Config):
    surface_class = "KvCacheConfig"


class CudaGraphConfig(_Config):
    surface_class = "DecodeCudaGraphConfig"


class SchedulerConfig(_Config):
    surface_class = "SchedulerConfig"


class DraftTargetDecodingConfig(_Config):
    surface_class = "DraftTargetDecodingConfig"


# BuildConfig is a dataclass in the source read: so is the fake (lem reads its fields with dataclasses.fields).
_BuildConfigFields = dataclasses.make_dataclass(
    "_BuildConfigFields",
    [(name, Any, dataclasses.field(default=None)) for name in surface_check.fields(SURFACE, "BuildConfig")],
)


class BuildConfig(_BuildConfigFields):  # type: ignore[misc,valid-type]
    surface_class = "BuildConfig"

    def __init__(self, **kwargs: Any) -> None:
        _checked(self.surface_class, kwargs)
        super().__init__(**kwargs)
        self.kwargs = kwargs


QuantAlgo = enum.Enum("QuantAlgo", {m: v for m, v in SURFACE["classes"]["QuantAlgo"]["members"].items()}, type=str)
QuantAlgo.surface_class = "QuantAlgo"  # type: ignore[attr-defined]


class QuantConfig(_Config):
    surface_class = "QuantConfig"

    def __init__(self, **kwargs: Any) -> None:
        if not isinstance(kwargs.get("quant_algo"), (QuantAlgo, type(None))):
            raise TypeError(f"QuantConfig.quant_algo must be a QuantAlgo, got {kwargs.get('quant_algo')!r}")
        super().__init__(**{k: v.value if isinstance(v, QuantAlgo) else v for k, v in kwargs.items()})


class CalibConfig(_Config):
    surface_class = "CalibConfig"


class TorchLlmArgs:
    """Only what lem reads: the field names (pydantic's ``model_fields``)."""

    model_fields = surface_check.fields(SURFACE, "TorchLlmArgs")


class TrtLlmArgs:
    """The engine flow's arguments: only the field names, as for ``TorchLlmArgs``."""

    model_fields = surface_check.fields(SURFACE, "TrtLlmArgs")


class SamplingParams:
    surface_class = "SamplingParams"

    def __init__(self, **kwargs: Any) -> None:
        _checked("SamplingParams", kwargs)
        defaults = {k: None for k in surface_check.fields(SURFACE, "SamplingParams")}
        self.__dict__.update({**defaults, "max_tokens": 32, "n": 1, "ignore_eos": False, **kwargs})


class CompletionOutput:
    """Like TensorRT-LLM's: ``token_ids`` holds every token so far, ``token_ids_diff`` the newest."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.token_ids: list[int] = []
        self._last_token_ids_len = 0
        self.finish_reason: str | None = None

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


class RequestOutput:
    """A request's result: awaitable as an async iterator of itself after each step (streaming)."""

    def __init__(self, llm: LLM, number: int, prompt_ids: list[int], sp: SamplingParams, streaming: bool) -> None:
        self.llm = llm
        self.number = number
        self.prompt_token_ids = prompt_ids
        self.sp = sp
        self.streaming = streaming
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self.aborted = False

    def _tokens(self) -> list[int]:
        base = sum(self.prompt_token_ids)
        return [3 + (base + i) % 997 for i in range(self.sp.max_tokens)]

    def abort(self) -> None:
        self.aborted = True
        _log("abort", request=self.number)

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished or self.aborted:
            raise StopAsyncIteration
        script = _script()
        out = self.outputs[0]
        if not out.token_ids:
            self.llm._enter()
        try:
            await asyncio.sleep(float(script.get("step_s", 0.002)))
            if script.get("crash_on") == self.number:
                raise RuntimeError("fake executor died")
            fail_every = script.get("fail_every")
            if fail_every and self.number % int(fail_every) == 0 and out.token_ids:
                raise RequestError(f"request {self.number} failed in the fake executor")
        except BaseException:
            self.llm._leave()
            raise
        tokens = self._tokens()
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.append(tokens[len(out.token_ids)])
        if len(out.token_ids) == len(tokens):
            self.finished = True
            out.finish_reason = "length"
            self.llm._leave()
        return self


class _Tokenizer:
    """TensorRT-LLM's TransformersTokenizer wrapper: the Hugging Face tokenizer is ``.tokenizer``."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)


class LLM:
    surface_call, surface_args = "LLM.__init__", "TorchLlmArgs"

    def __init__(self, model: str, **kwargs: Any) -> None:
        problems = surface_check.check_call(SURFACE, self.surface_call, [model], {})
        problems += surface_check.check_kwargs(SURFACE, self.surface_args, {"model": model, **kwargs})
        if problems:
            raise TypeError("; ".join(problems))
        if _script().get("fail_load"):
            raise RuntimeError("fake LLM failed to load")
        self.model = model
        self.args = kwargs
        tokenizer = str(kwargs.get("tokenizer") or model)
        self.tokenizer = _Tokenizer(tokenizer) if (Path(tokenizer) / "tokenizer_config.json").is_file() else None
        self._count = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.shut_down = 0
        _log("init", args={k: repr(v) for k, v in kwargs.items()})

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            _log("in_flight", n=self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _prompt_ids(self, inputs: Any) -> list[int]:
        if isinstance(inputs, str):
            assert self.tokenizer is not None, "text prompts need a tokenizer"
            return list(self.tokenizer.tokenizer.encode(inputs))
        return list(inputs)

    def generate_async(self, inputs: Any, sampling_params: Any = None, *args: Any, **kwargs: Any) -> RequestOutput:
        problems = surface_check.check_call(SURFACE, "LLM.generate_async", [inputs, sampling_params, *args], kwargs)
        if problems:
            raise TypeError("; ".join(problems))
        asyncio.get_running_loop()  # TensorRT-LLM binds the result queue to the running loop
        self._count += 1
        sp = sampling_params or SamplingParams()
        return RequestOutput(self, self._count, self._prompt_ids(inputs), sp, bool(kwargs.get("streaming")))

    def generate(self, inputs: Any, sampling_params: Any = None, **kwargs: Any) -> list[RequestOutput]:
        problems = surface_check.check_call(SURFACE, "LLM.generate", [inputs, sampling_params], kwargs)
        if problems:
            raise TypeError("; ".join(problems))
        results = []
        for item in inputs:
            self._count += 1
            result = RequestOutput(self, self._count, self._prompt_ids(item), sampling_params, False)
            result.outputs[0].token_ids = result._tokens()
            result.finished = True
            results.append(result)
        return results

    def shutdown(self) -> None:
        self.shut_down += 1
        _log("shutdown")


#: Called while the fake builds an engine (tests add energy to a fake GPU here).
ON_BUILD: list[Any] = []
ENGINE_MARKER = "lem-fake-engine.json"


class TrtLLM(LLM):
    """The engine flow's ``LLM`` (``tensorrt_llm._tensorrt_engine.LLM``): builds from a checkpoint or loads an engine.

    A directory holding what :meth:`save` wrote is an engine and is loaded; anything else is a checkpoint and
    is "built" (``build_s`` seconds, scripted) with the ``build_config`` given. ``crash_in_save`` (scripted)
    writes part of the engine and raises, like a build killed half-way.
    """

    surface_call, surface_args = "TrtLLM.__init__", "TrtLlmArgs"

    def __init__(self, model: str, **kwargs: Any) -> None:
        build_config = kwargs.get("build_config")
        if build_config is not None and getattr(build_config, "surface_class", None) != "BuildConfig":
            raise TypeError(f"build_config must be a BuildConfig, got {build_config!r}")
        super().__init__(model, **kwargs)
        self.built = not (Path(model) / ENGINE_MARKER).is_file()
        if self.built:
            import time

            time.sleep(float(_script().get("build_s", 0.0)))
            for hook in ON_BUILD:
                hook()
            quant = {k: getattr(kwargs.get(k), "kwargs", None) for k in ("quant_config", "calib_config")}
            _log("build", model=model, build_config=getattr(build_config, "kwargs", None), **quant)
        else:
            _log("load_engine", model=model)

    def save(self, engine_dir: str) -> None:
        problems = surface_check.check_call(SURFACE, "TrtLLM.save", [engine_dir], {})
        if problems:
            raise TypeError("; ".join(problems))
        if not self.built:
            raise RuntimeError("The engine is not built yet.")  # TensorRT-LLM's words, for a loaded engine
        target = Path(engine_dir)
        target.mkdir(parents=True, exist_ok=True)
        (target / "rank0.engine").write_bytes(b"fake engine, part 1")
        if _script().get("crash_in_save"):
            raise RuntimeError("fake build crashed while saving the engine")
        build_config = self.args.get("build_config")
        meta = {"model": self.model, "build_config": getattr(build_config, "kwargs", None)}
        (target / ENGINE_MARKER).write_text(json.dumps(meta))
        _log("save", path=str(target))
