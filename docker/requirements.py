"""Print the pip requirements of one recstream image, derived from pyproject.toml.

Dependencies are installed in their own layer before the source is copied, so a
code change does not reinstall them; this script keeps that layer in step with
``pyproject.toml`` instead of a second, hand-kept list.

    python docker/requirements.py --onnxruntime gpu            # GPU worker
    python docker/requirements.py --onnxruntime cpu            # CPU worker
    python docker/requirements.py --onnxruntime gpu --extra train   # training image

``--onnxruntime cpu`` drops the ``onnxruntime-gpu`` requirement (pyproject selects
it on Linux x86_64 through an environment marker) and pins plain ``onnxruntime``
without a marker, so the CPU image carries no CUDA provider libraries. Standard
library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_ORT = {"onnxruntime", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, onnxruntime: str, extras: list[str]) -> list[str]:
    """The requirement lines for one image variant."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines: list[str] = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject has {sorted(optional)}")
        lines += optional[extra]
    if onnxruntime == "cpu":
        ort = [line for line in lines if _name(line) in _ORT]
        versions = {line.split(";")[0].strip()[len(_name(line)) :] for line in ort}
        lines = [line for line in lines if _name(line) not in _ORT]
        spec = sorted(versions)[0] if versions else ""
        lines.append(f"onnxruntime{spec}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnxruntime", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--extra", action="append", default=[], help="an optional extra")
    parser.add_argument(
        "--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml"
    )
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(requirements(args.pyproject, args.onnxruntime, args.extra)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
