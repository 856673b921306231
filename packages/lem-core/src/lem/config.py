"""The experiment configuration: what one TOML experiment file says.

Each TOML table is one frozen attrs class below; :data:`converter` (in
:mod:`lem.configfile.loading`) structures a TOML document into :class:`ExperimentConfig`
strictly. Tables named after a backend (``[pytorch]``, ``[vllm]``,
``[tensorrt]``, or any installed backend plugin) are not described here: they
are passed through untouched in :attr:`ExperimentConfig.backend_options` and
validated by that backend's ``validate_config``.

Ranges (non-negative sizes, ``top_p`` in (0, 1], ...) are checked by the
core's own ``validate_config`` in :mod:`lem.configfile.validation`, so every problem in a
file is reported at once rather than stopping at the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

Precision = Literal["float32", "float16", "bfloat16"]
LoadFormat = Literal["auto", "random"]
DatasetSource = Literal["synthetic", "builtin", "file", "huggingface"]
FileFormat = Literal["auto", "jsonl", "csv", "parquet", "text", "paragraphs"]
LengthDistribution = Literal["fixed", "uniform", "normal"]
Sampling = Literal["first", "random"]
BatchingStrategy = Literal["static", "dynamic", "sorted_static", "sorted_dynamic"]
TrafficMode = Literal["offline", "poisson", "constant", "concurrency"]
WarmupMode = Literal["fixed", "cv"]
Validity = Literal["warn", "invalidate", "retry"]
QuantizationMethod = Literal["none", "bnb-4bit", "bnb-8bit", "gptq", "awq", "fp8"]


@attrs.frozen
class DatasetConfig:
    """``[dataset]``: where prompts come from and how many (see docs/datasets.md and :mod:`lem.prompts`)."""

    source: DatasetSource = "synthetic"
    #: ``file``: path to a JSONL, CSV, Parquet or text file (relative to the working directory).
    path: str | None = None
    #: ``file``: ``auto`` guesses from the extension; ``text`` is one prompt per line,
    #: ``paragraphs`` is prompts separated by blank lines.
    format: FileFormat = "auto"
    #: ``huggingface``: dataset name (``"tatsu-lab/alpaca"``) or a local dataset directory.
    name: str | None = None
    #: ``huggingface``: config name; ``builtin``: ``short``, ``instruction`` or ``long``.
    subset: str | None = None
    split: str = "train"
    #: Field (column) holding the prompt text; default: the first of ``prompt``, ``text``,
    #: ``instruction``, ``question``, ``input``, ``content`` that exists. An optional second field is
    #: appended after a blank line when non-empty (alpaca-style ``instruction`` + ``input``).
    field: str | None = None
    input_field: str | None = None
    num_prompts: int = 100
    #: ``first``: the first ``num_prompts``; ``random``: a sample seeded by the experiment's seed.
    sampling: Sampling = "first"
    #: Synthetic prompts: input length in tokens and its distribution (``fixed`` uses
    #: ``input_length``; ``uniform`` draws from [min, max]; ``normal`` has mean ``input_length``
    #: and ``input_length_std``, clipped to [min, max] where given).
    input_length: int = 128
    input_length_distribution: LengthDistribution = "fixed"
    input_length_min: int | None = None
    input_length_max: int | None = None
    input_length_std: float | None = None
    #: Truncate prompts longer than this many tokens (the end of the user's text is cut).
    max_input_tokens: int | None = None
    #: Wrap each prompt as a user message in the tokenizer's chat template.
    apply_chat_template: bool = False
    #: ``file`` and ``huggingface``: the field holding each prompt's expected answer, scored by ``[quality]``.
    reference_field: str | None = None


@attrs.frozen
class GenerationConfig:
    """``[generation]``: decoding parameters, the same for every backend."""

    max_output_tokens: int = 128
    min_output_tokens: int = 0
    do_sample: bool = False
    #: 0 means greedy, whatever ``do_sample`` says.
    temperature: float = 1.0
    top_p: float = 1.0
    #: 0 means off.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    #: Generate exactly ``max_output_tokens`` (fixed-length workloads).
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token at every step."""
        return not self.do_sample or self.temperature == 0.0


@attrs.frozen
class BatchingConfig:
    """``[batching]``: how requests are grouped (for backends that batch themselves)."""

    batch_size: int = 1
    strategy: BatchingStrategy = "static"
    #: Token budget per batch for the dynamic strategies (input + output tokens).
    max_tokens_per_batch: int | None = None


@attrs.frozen
class TrafficConfig:
    """``[traffic]``: when requests arrive."""

    mode: TrafficMode = "offline"
    #: Requests per second for ``poisson`` and ``constant``.
    rate: float | None = None
    #: Requests in flight for ``concurrency`` (closed loop).
    concurrency: int | None = None


def cycle_limit(cycles: int, target_rel_ci: float | None, max_cycles: int | None) -> int:
    """The most cycles an experiment runs: ``cycles``, or up to ``max_cycles`` under a precision target
    (default ``max(20, 10 * cycles)``)."""
    if target_rel_ci is None:
        return cycles
    return max_cycles if max_cycles is not None else max(20, 10 * cycles)


@attrs.frozen
class MeasurementConfig:
    """``[measurement]``: warm-up, cycles, idle baseline and energy metering."""

    warmup: WarmupMode = "fixed"
    warmup_requests: int = 3
    #: ``cv``: stop warming up once the coefficient of variation of per-request
    #: latency over the last ``warmup_window`` requests is below the threshold.
    warmup_cv_threshold: float = 0.05
    warmup_window: int = 5
    warmup_max_requests: int = 50
    cycles: int = 3
    #: A cycle serves the prompt set again (new request ids, same prompts) until its window lasts at
    #: least this many seconds; 0 serves it once. The number of passes is recorded per cycle.
    min_window_s: float = 0.0
    #: After ``cycles``, keep running cycles until the 95% CI half-width of J/output token and of
    #: output tok/s, relative to their mean, are both within this (0.02 = ±2%), or ``max_cycles``.
    target_rel_ci: float | None = None
    #: The most cycles a precision target may run (default: 10 × ``cycles``, at least 20).
    max_cycles: int | None = None
    #: Each cycle also serves its requests again with one output token, in a meter window of its
    #: own: prefill J per input token, decode J = total - prefill, measured.
    prefill_pass: bool = False
    #: Seconds of idle baseline with the model resident; 0 skips it.
    idle_seconds: float = 5.0
    #: Energy meter plugin name, or a list of them measured together
    #: (``["nvml", "rapl"]``, see docs/energy.md); ``auto`` takes the first
    #: that works here, ``none`` measures no energy.
    energy_meter: str | tuple[str, ...] = "auto"
    sampling_interval_ms: float = 100.0
    #: Pause between cycles, and optionally wait for the GPU to cool below a temperature.
    cooldown_seconds: float = 0.0
    thermal_floor_c: float | None = None
    #: CUDA device ordinals to meter; default: the ones the model occupies.
    devices: tuple[int, ...] | None = None
    #: A worker that shows no progress for this many seconds is declared hung and killed.
    stall_timeout_s: float = 1800.0
    #: The share of requests that may fail before the experiment counts as ``degraded`` (0: any failed
    #: request does); an experiment none of whose requests succeeded is ``failed`` whatever this says.
    max_failed_share: float = 0.0
    #: The figures a precision target applies to (registry names); default: J/output token and output tok/s.
    target_figures: tuple[str, ...] | None = None
    # --- energy you can defend (lem.figures.validity, lem.figures.uncertainty; docs/energy.md) ---
    #: A cycle's energy counter and its power timeline integrated may differ by this share before it is flagged.
    cross_check_threshold: float = 0.05
    #: What a spoilt cycle (throttled, unsettled GPU, busy host, throughput outlier) does: ``warn`` keeps it,
    #: ``invalidate`` marks it and leaves it out of the summary, ``retry`` also runs a replacement.
    validity: Validity = "warn"
    #: The most replacement cycles ``retry`` runs in one experiment; later spoilt cycles are only left out.
    validity_retries: int = 3
    #: A cycle is throttled when more than this share of a GPU's samples show power or thermal throttling.
    max_throttle_share: float = 0.05
    #: A GPU has not settled when its temperature at a cycle's start is this many °C from the previous cycle's.
    max_temperature_step_c: float = 5.0
    #: Wait up to this many seconds before a cycle for the temperature to settle within the step (0: no wait).
    settle_wait_s: float = 0.0
    #: The host is busy when other processes used more than this share of all CPUs during the cycle.
    max_host_cpu_share: float = 0.25
    #: ... or the 1-minute load average per CPU was above this at the cycle's end.
    max_load_per_cpu: float = 1.5
    #: ... or the hypervisor stole more than this share of CPU time (in a VM).
    max_steal_share: float = 0.02
    #: A cycle whose throughput is this share away from the median of the earlier counted cycles is an outlier.
    max_throughput_deviation: float = 0.25

    @property
    def cycle_limit(self) -> int:
        """The most cycles this experiment runs (see :func:`cycle_limit`)."""
        return cycle_limit(self.cycles, self.target_rel_ci, self.max_cycles)

    @property
    def energy_meters(self) -> tuple[str, ...]:
        """``energy_meter`` as a tuple of names (one name is a tuple of one)."""
        return (self.energy_meter,) if isinstance(self.energy_meter, str) else tuple(self.energy_meter)


@attrs.frozen
class SloConfig:
    """``[slo]``: service-level objectives a request must meet to count in goodput (see docs/configuration.md).

    A target left out is not checked; with no target at all no goodput is computed (its figures are null
    with the reason). ``percentile`` is the share of requests (in %) each latency must keep within its target.
    """

    #: Time to first token, in milliseconds.
    ttft_ms: float | None = None
    #: Time per output token after the first, in milliseconds (a one-token request meets it).
    tpot_ms: float | None = None
    #: End-to-end latency, in milliseconds.
    e2e_ms: float | None = None
    #: The percentile each configured latency is checked at (99: p99, as MLPerf's server scenario).
    percentile: float = 99.0

    @property
    def targets_ms(self) -> dict[str, float]:
        """The configured targets, ``{"ttft_ms": 200.0, ...}`` (empty when none is set)."""
        found = {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}
        return {k: float(v) for k, v in found.items() if v is not None}


#: What a scorer may normalise before comparing (``[quality] normalize``).
Normalization = Literal["case", "whitespace", "punctuation"]


@attrs.frozen
class QualityConfig:
    """``[quality]``: how each output is scored against its reference (see docs/quality.md).

    Its presence turns scoring on; it needs ``dataset.reference_field``.
    """

    #: A scorer's name: ``exact``, ``contains``, ``number``, ``choice``, ``regex``, or one a plugin
    #: registers (``register_scorers``).
    scorer: str = "exact"
    #: ``regex``: the pattern searched in the output; its first group (else the whole match) is compared.
    pattern: str | None = None
    #: Applied to the output and the reference before comparing: ``case`` folds case, ``whitespace``
    #: collapses runs of it and trims the ends, ``punctuation`` strips it from both ends.
    normalize: tuple[Normalization, ...] = ("case", "whitespace", "punctuation")
    #: ``choice``: the option letters the answer may name.
    choices: str = "ABCDE"


@attrs.frozen
class ShardingConfig:
    """``[sharding]``: model parallelism."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1


@attrs.frozen
class QuantizationConfig:
    """``[quantization]``: weight quantization."""

    method: QuantizationMethod = "none"
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = False


@attrs.frozen
class HardwareConfig:
    """``[hardware]``: the accelerator's peaks, overriding lem's table (see :mod:`lem.figures.hardware`).

    Per device. The utilisation figures use them times the number of devices the model occupies.
    """

    #: Device memory bandwidth, GB/s (1e9 bytes per second).
    peak_memory_bandwidth_gbs: float | None = None
    #: Dense matmul throughput, TFLOP/s, at ``peak_tflops_precision``.
    peak_tflops: float | None = None
    #: The compute precision ``peak_tflops`` applies to (``fp8`` under fp8 quantization).
    peak_tflops_precision: Literal["float32", "float16", "bfloat16", "fp8"] = "bfloat16"


@attrs.frozen
class ExperimentConfig:
    """One experiment, fully resolved (preset and CLI options applied)."""

    #: Hugging Face id, local path, or a built-in ``random:<name>`` architecture.
    model: str
    backend: str = "pytorch"
    name: str | None = None
    precision: Precision = "bfloat16"
    seed: int = 42
    #: LoRA adapter (path or hub id).
    adapter: str | None = None
    #: ``random``: build the architecture with random weights, download nothing.
    load_format: LoadFormat = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    #: The preset this config was built on, recorded for the results.
    preset: str | None = None
    dataset: DatasetConfig = attrs.field(factory=DatasetConfig)
    generation: GenerationConfig = attrs.field(factory=GenerationConfig)
    batching: BatchingConfig = attrs.field(factory=BatchingConfig)
    traffic: TrafficConfig = attrs.field(factory=TrafficConfig)
    measurement: MeasurementConfig = attrs.field(factory=MeasurementConfig)
    sharding: ShardingConfig = attrs.field(factory=ShardingConfig)
    quantization: QuantizationConfig = attrs.field(factory=QuantizationConfig)
    slo: SloConfig = attrs.field(factory=SloConfig)
    hardware: HardwareConfig = attrs.field(factory=HardwareConfig)
    #: ``[quality]``: scoring outputs against references; ``None`` when the file has no such table.
    quality: QualityConfig | None = None
    #: Backend-owned tables (``[pytorch]``, ``[vllm]``, ...), by table name.
    backend_options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    def options_for(self, backend: str) -> Mapping[str, Any]:
        """The table of a backend (``[vllm]`` for ``"vllm"``), empty if absent."""
        return self.backend_options.get(backend, {})

    def metered_devices(self) -> tuple[int, ...]:
        """The devices lem meters (and a server it starts is given): ``measurement.devices``, else one per tensor x
        pipeline rank."""
        if self.measurement.devices is not None:
            return tuple(self.measurement.devices)
        return tuple(range(self.sharding.tensor_parallel_size * self.sharding.pipeline_parallel_size))


#: The top-level tables that belong to the core (everything else must be a backend's).
CORE_TABLES = (
    "dataset",
    "generation",
    "batching",
    "traffic",
    "measurement",
    "sharding",
    "quantization",
    "slo",
    "hardware",
    "quality",
)
