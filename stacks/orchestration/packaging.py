"""Lambda packaging without Docker: CDK local bundling (``ILocalBundling``) for layers and handler code.

* Dependency layers: ``pip install --platform ... --only-binary=:all: --target`` builds wheels for the Lambda's
  Python and architecture, whatever this machine runs (pydantic-core is compiled). The result is cached under
  ``build/lambda-layers/<key>`` (``RLPIPE_LAMBDA_CACHE`` overrides), keyed by the requirements, the Python
  version and the platforms, so repeated synths copy a directory instead of running pip; the asset hash is the
  same key, so an unchanged layer is never uploaded twice.
* Handler code: ``lambdas/<name>/handler.py`` plus the ``rlpipe`` core (no trainer, no envs: no torch, SB3 or
  gymnasium; config validation uses the shipped env catalog). Hashed by output, so a change in the core
  redeploys every function.

Docker is never used: each bundler either bundles or raises.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[2]
LAMBDAS_DIR = REPO_ROOT / "lambdas"
LAYERS_DIR = LAMBDAS_DIR / "layers"
CORE_PACKAGE = REPO_ROOT / "rlpipe"

LAMBDA_PYTHON = "3.13"
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.X86_64
# Lambda's Python 3.13 runs on Amazon Linux 2023 (glibc 2.34): any wheel up to manylinux_2_34 loads there.
WHEEL_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
# Not needed at run time in a Lambda: the training code, the MuJoCo envs, the CLIs, caches.
CORE_EXCLUDE = ("trainer", "envs", "cli.py", "runner.py", "__pycache__", "*.pyc")
_PRUNE_DIRS = ("__pycache__", "tests")  # anywhere; console scripts (bin/) only at the top
# Only consulted if local bundling were skipped; it never is (see _LocalBundler.try_bundle).
_UNUSED_IMAGE = DockerImage.from_registry(f"public.ecr.aws/sam/build-python{LAMBDA_PYTHON}")


def cache_root() -> Path:
    """Where built layers are kept between synths."""
    return Path(os.environ.get("RLPIPE_LAMBDA_CACHE") or REPO_ROOT / "build" / "lambda-layers")


def layer_key(requirements: Path) -> str:
    """Content key of a layer: requirements, target Python and wheel platforms."""
    blob = "\n".join([LAMBDA_PYTHON, *WHEEL_PLATFORMS, requirements.read_text()])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _prune(root: Path) -> None:
    shutil.rmtree(root / "bin", ignore_errors=True)
    for pattern in _PRUNE_DIRS:
        for path in sorted(root.rglob(pattern), reverse=True):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def build_layer(requirements: Path) -> Path:
    """The layer directory (``python/`` inside) for ``requirements``: from the cache, else built with pip."""
    target = cache_root() / layer_key(requirements)
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(work / "python"), "--implementation", "cp", "--python-version", LAMBDA_PYTHON,
               "--only-binary=:all:", *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)],
               "-r", str(requirements)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the Lambda layer {requirements} failed:\n{done.stderr[-4000:]}")
        _prune(work / "python")
        (work / ".complete").write_text(" ".join(cmd) + "\n")
        try:
            work.rename(target)
        except OSError:  # built meanwhile by another synth: keep that one
            if not (target / ".complete").is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def copy_handler(name: str, into: Path) -> None:
    """``lambdas/<name>/handler.py`` and the rlpipe core into ``into`` (the function's code root)."""
    source = LAMBDAS_DIR / name / "handler.py"
    if not source.is_file():
        raise FileNotFoundError(source)
    shutil.copy2(source, into / "handler.py")
    shutil.copytree(CORE_PACKAGE, into / "rlpipe", ignore=shutil.ignore_patterns(*CORE_EXCLUDE),
                    dirs_exist_ok=True)


@jsii.implements(ILocalBundling)
class _LocalBundler:
    """Runs ``fill(output_dir)`` in-process at synth."""

    def __init__(self, fill: Callable[[Path], None]) -> None:
        self._fill = fill

    def try_bundle(self, output_dir: str, *args: Any, **options: Any) -> bool:
        self._fill(Path(output_dir))
        return True


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link when the cache and the assembly share a file system (fast for a 100 MB layer), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_layer(requirements: Path) -> Callable[[Path], None]:
    def fill(out: Path) -> None:
        shutil.copytree(build_layer(requirements), out, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".complete"))
    return fill


def layer_code(layer: str) -> lambda_.Code:
    """Code of the dependency layer ``lambdas/layers/<layer>/requirements.txt``."""
    requirements = LAYERS_DIR / layer / "requirements.txt"
    return lambda_.Code.from_asset(
        str(requirements.parent), asset_hash_type=AssetHashType.CUSTOM, asset_hash=layer_key(requirements),
        bundling=BundlingOptions(image=_UNUSED_IMAGE, local=_LocalBundler(_copy_layer(requirements))))


def handler_code(name: str) -> lambda_.Code:
    """Code of the function ``lambdas/<name>``: its handler and the rlpipe core."""
    return lambda_.Code.from_asset(
        str(LAMBDAS_DIR / name), asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(image=_UNUSED_IMAGE, local=_LocalBundler(lambda out: copy_handler(name, out))))
