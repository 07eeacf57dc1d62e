"""The Dockerfile's steps, replayed without a Docker engine: its COPY lines lay the files out
under a temporary root as the image would have them, its `pip install .` becomes a clean,
non-editable install of that copy into a temporary prefix (the project's dependencies come from
the test's own environment), and the installed `observer` validates the copied flows from
another directory. This is what `docker compose up` runs first, and what failed when the image
had no `schemas/` or when `schema:` paths resolved against the working directory."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def _image_layout(root: Path) -> tuple[Path, list[str]]:
    """Carry out the Dockerfile's WORKDIR and COPY steps under `root`; returns the work dir and
    the RUN commands."""
    workdir = root
    runs = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "WORKDIR":
            workdir = root / words[1].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif words[0] == "RUN":
            runs.append(" ".join(words[1:]))
        elif words[0] == "COPY":
            *sources, dest = words[1:]
            target = (root / dest.lstrip("/")) if dest.startswith("/") else workdir / dest
            for pattern in sources:
                for found in sorted(glob.glob(str(ROOT / pattern))):
                    src = Path(found)
                    to = target / src.name if dest.endswith("/") else target
                    if src.is_dir():
                        shutil.copytree(src, to, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        to.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, to)
    return workdir, runs


def test_a_clean_install_of_the_image_validates_its_flows_from_another_directory(
    tmp_path: Path,
) -> None:
    image = tmp_path / "image"
    workdir, runs = _image_layout(image)
    assert any(re.search(r"(^|&& )pip install \.(\s|$)", r) for r in runs), runs
    assert (image / "flows").is_dir() and (image / "schemas").is_dir()

    prefix = tmp_path / "prefix"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # not compiled here (the project's own install compiles, and .ci/run requires it): this is
    # about the image's layout, its package data and the build record it ships
    install = subprocess.run(
        # --ignore-installed: else pip uninstalls the project from the running venv first
        [*pip, "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(workdir)],
        env={**os.environ, "OBSERVER_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    assert (site / "observer" / "adapters" / "redis" / "write.lua").is_file()  # package data
    assert (site / "observer" / "_build.json").is_file()  # which build: observer/build.py

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PYTHONHOME", None)
    where = subprocess.run(
        [sys.executable, "-c", "import observer; print(observer.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), "the installed copy is not the one run"

    validate = subprocess.run(
        [str(prefix / "bin" / "observer"), "validate", str(image / "flows")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validate.returncode == 0, validate.stderr
    assert "ok: returns v1" in validate.stderr  # the flow with Avro schemas
    assert "ok: checkout v1" in validate.stderr
