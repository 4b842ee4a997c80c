"""The tunelab cache directory and sha256-verified, atomic file placement."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError


def tunelab_home() -> Path:
    """Root of tunelab's cache: `$TUNELAB_HOME`, else `~/.cache/tunelab`."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise TunelabError(
            f"{path} has sha256 {actual[:12]}..., expected {expected[:12]}...: "
            f"delete it and run the command again to fetch a fresh copy"
        )


def place_verified(source: Path, destination: Path, expected_sha256: str) -> Path:
    """Copy `source` to `destination` atomically, after checking its sha256."""
    verify_sha256(source, expected_sha256)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        shutil.copyfile(source, tmp_path)
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)
    return destination
