"""docker/*.Dockerfile, checked without Docker (none runs here, and hadolint is not installed): each parses
into known instructions, starts FROM an official image pinned to a tag (never `latest`), installs lem-core
and its backend's distribution from this repository, pins what it installs besides, and leaves no
entrypoint in the way of the `-m lem.campaign.worker` lem appends to a launcher.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
#: Backend -> its distribution's directory, and the official image (repository) its Dockerfile starts from.
BACKENDS = {
    "pytorch": ("lem-backend-pytorch", "pytorch/pytorch"),
    "vllm": ("lem-backend-vllm", "vllm/vllm-openai"),
    "tensorrt": ("lem-backend-tensorrt", "nvcr.io/nvidia/tensorrt-llm/release"),
    "llamacpp": ("lem-backend-llamacpp", "nvidia/cuda"),
}


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the file ends inside a continued instruction"
    return out


def test_every_backend_has_a_dockerfile_and_nothing_else_is_there() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{b}.Dockerfile" for b in BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_dockerfile_parses_pins_its_base_and_installs_lem_and_the_backend(backend: str) -> None:
    dist, image = BACKENDS[backend]
    steps = instructions((DOCKER / f"{backend}.Dockerfile").read_text())
    assert steps and all(keyword in INSTRUCTIONS for keyword, _ in steps), steps
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert len(froms) == 1 and steps[0][0] == "FROM"
    repository, sep, tag = froms[0].split()[0].rpartition(":")
    assert sep and repository == image, froms[0]
    assert tag and tag != "latest" and re.search(r"\d", tag), f"{froms[0]}: not pinned to a version"
    copied = {shlex.split(args)[0] for keyword, args in steps if keyword == "COPY"}
    assert {"packages/lem-core", f"packages/{dist}"} <= copied
    assert all((ROOT / path).is_dir() for path in copied)
    installs = " ".join(args for keyword, args in steps if keyword == "RUN" and "pip install" in args)
    for path in ("lem-core", dist):
        assert f"/opt/lem/{path}" in installs, f"{path} is copied but not installed"
    # What is installed from the package index is pinned to the version lem was tested with.
    for word in shlex.split(installs.replace("&&", " ")):
        if re.match(r"^[A-Za-z][\w.-]*[<>=!~]", word) and not word.startswith(("CMAKE_ARGS", "psutil")):
            assert "==" in word, f"{word}: not pinned"
    entrypoints = [args for keyword, args in steps if keyword == "ENTRYPOINT"]
    assert entrypoints == ["[]"], "lem appends `-m lem.campaign.worker` to the launcher: no entrypoint may wrap it"
    assert "latest" not in (DOCKER / f"{backend}.Dockerfile").read_text()


def test_the_tensorrt_image_is_the_release_the_docs_name() -> None:
    (args,) = [a for k, a in instructions((DOCKER / "tensorrt.Dockerfile").read_text()) if k == "FROM"]
    tag = args.rpartition(":")[2]
    assert f"release:{tag}" in (ROOT / "docs" / "tensorrt.md").read_text()
