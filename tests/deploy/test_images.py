"""images/: what can be checked without a Docker engine (the builds themselves need one)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from visalign_pipelines import settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "images" / "Dockerfile.cpu", "cuda": ROOT / "images" / "Dockerfile.cuda"}


def _stages(text: str) -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[list[str]] = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_base_images_are_pinned_and_overridable_by_digest():
    for name, path in DOCKERFILES.items():
        text = path.read_text()
        args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
        assert args, name
        for arg, ref in args.items():
            tag = ref.rsplit(":", 1)[1]
            assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {arg}={ref} is not a patch-level pin"
        for stage in _stages(text):
            base = stage[0].split()[1]
            assert base.startswith("${") or base in ("cuda", "build"), f"{name}: FROM {base} bypasses the pinned ARG"


def test_images_run_as_a_non_root_user_and_install_the_repo_with_the_constraints():
    for name, path in DOCKERFILES.items():
        for stage in _stages(path.read_text()):
            header = stage[0]
            if header.endswith(" AS build"):  # the build stage never ships
                continue
            users = [i for i in stage if i.startswith("USER ")]
            if users:  # a stage that switches to root for a step must switch back
                assert users[-1] == "USER 1000:1000", f"{name}: {header} ends as {users[-1]}"
            else:  # only stages built on our own non-root stage may inherit its user
                assert header.split()[1] == "cuda", f"{name}: {header} sets no USER"
        text = path.read_text()
        assert "USER 1000:1000" in text, name
        assert re.search(r"pip install -c constraints\.txt \"?\.(\[server\])?\"?", text), name
        assert "COPY components ./components" in text and "COPY pipelines ./pipelines" in text, name
    cuda = DOCKERFILES["cuda"].read_text()
    assert "flash-attn" in cuda and "vllm" in cuda and "AS rollout" in cuda
    assert "deepspeed" in cuda


def test_make_images_says_it_needs_a_docker_engine():
    run = subprocess.run(["make", "-s", "images", "DOCKER=/nonexistent/docker"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "needs a Docker engine" in run.stderr


def test_image_names_agree_across_makefile_chart_and_pipelines():
    chart = yaml.safe_load((ROOT / "charts" / "visalign" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "visalign" / "values.yaml").read_text())
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == version
    assert settings.DEFAULT_IMAGE == f"{values['pipelines']['image']['repository']}:{version}"
    makefile = (ROOT / "Makefile").read_text()
    for repo in (values["image"]["repository"], values["pipelines"]["image"]["repository"]):
        assert repo.rsplit("/", 1)[1] + ":$(IMAGE_TAG)" in makefile


def test_cuda_image_installs_the_torchvision_built_for_its_torch_and_the_family_extras():
    cuda = DOCKERFILES["cuda"].read_text()
    assert re.search(r'pip install -c constraints\.txt "\.\[families\]" torchvision', cuda)
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    torch_minor = int(pins["torch"].split(".")[1])
    assert pins["torchvision"].startswith(f"0.{torch_minor + 15}."), "torchvision 0.(N+15) is built for torch 2.N"
    assert '"num2words"' in (ROOT / "pyproject.toml").read_text().split("families = ", 1)[1].splitlines()[0]
