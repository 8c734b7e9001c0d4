"""Hugging Face weights: a repository's files, found the way :mod:`lens.encoders.weights` finds a checkpoint file.

Order: (1) a folder the user names, ``$LENS_WEIGHTS_DIR/<encoder-name>/`` (or ``$LENS_WEIGHTS_DIR/<org>/<repo>/``)
holding what ``save_pretrained`` or ``hf download --local-dir`` writes; (2) the Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), read offline with
``huggingface_hub.try_to_load_from_cache``; (3) ``huggingface_hub.snapshot_download`` of just the files lens needs,
into that cache, unless ``LENS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``. With no network the download fails in well under
a second (name resolution fails at the first request, and ``snapshot_download`` does not retry it).

The resolved path is a folder; builders load it with ``from_pretrained(folder, local_files_only=True)`` (or
safetensors for timm), so loading itself never touches the network. Only safetensors weights are accepted:
a folder with nothing but ``pytorch_model.bin`` (a pickle) is reported as incomplete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lens.encoders.weights import (
    OFFLINE_ENV,
    WeightsStatus,
    checkpoint_problem,
    env_flag,
    offline,
    weights_dir_label,
)

HF_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hf_hub_cache() -> Path:
    """The Hugging Face cache folder, computed as huggingface_hub does but from the environment at call time.

    (huggingface_hub reads these variables once, at import; lens reads them at every call so that a changed
    ``HF_HOME`` / ``HF_HUB_CACHE`` is honoured.)
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(os.path.expandvars(hf_home)).expanduser() / "hub"


@dataclass(frozen=True)
class HubWeights:
    """A Hugging Face repository's files and the places they may be found.

    Attributes:
        repo_id: ``org/name`` on the Hub, e.g. ``"openai/clip-vit-base-patch32"``.
        folder: name of the folder under ``$LENS_WEIGHTS_DIR`` (the encoder's registry name).
        files: files that must all be present (``model.safetensors`` is the weights' identity).
        one_of: groups of files of which at least one group must be complete (e.g. a tokenizer saved as
            ``tokenizer.json`` or as ``vocab.json`` + ``merges.txt``).
        extra_files: fetched with the others when the repository has them, never required.
        revision: branch, tag or commit on the Hub.
    """

    repo_id: str
    folder: str
    files: tuple[str, ...] = ("config.json", "model.safetensors")
    one_of: tuple[tuple[str, ...], ...] = ()
    extra_files: tuple[str, ...] = ()
    revision: str = "main"

    @property
    def weights_file(self) -> str:
        return next((f for f in self.files if f.endswith(".safetensors")), self.files[-1])

    def describe(self) -> str:
        return f"Hugging Face {self.repo_id}"

    def download_files(self) -> list[str]:
        """What a download fetches: the required files, every alternative group, the extras."""
        names = list(self.files)
        for group in self.one_of:
            names += [f for f in group if f not in names]
        names += [f for f in self.extra_files if f not in names]
        return names

    def missing(self, folder: Path) -> list[str]:
        """The required files (in words) that ``folder`` lacks; empty when lens can load it."""
        lacking = [f for f in self.files if not _nonempty(folder / f)]
        for f in self.files:  # a damaged safetensors file is as good as none (checked without loading it)
            problem = checkpoint_problem(folder / f) if f.endswith(".safetensors") and f not in lacking else None
            if problem is not None:
                lacking.append(f"an undamaged {f} ({problem})")
        if self.one_of and not any(all(_nonempty(folder / f) for f in group) for group in self.one_of):
            lacking.append(" or ".join(" + ".join(group) for group in self.one_of))
        return lacking

    def user_folders(self, user_dir: Path) -> list[Path]:
        folders = [user_dir / self.folder]
        if self.repo_id != self.folder:
            folders.append(user_dir.joinpath(*self.repo_id.split("/")))
        return folders

    def command(self, local_dir: str | None = None) -> str:
        """The ``hf download`` command that fetches what lens needs (into ``local_dir``, else the HF cache)."""
        names = list(self.files) + [f for f in (self.one_of[0] if self.one_of else ()) if f not in self.files]
        names += [f for f in self.extra_files if f not in names]
        command = f"hf download {self.repo_id} {' '.join(names)}"
        if self.revision != "main":
            command += f" --revision {self.revision}"
        return command + (f" --local-dir {local_dir}" if local_dir else "")

    def remedy(self, user_dir: Path | None = None, incomplete: str = "") -> str:
        target = f"{weights_dir_label(user_dir)}/{self.folder}"
        needed = list(self.files)
        if self.one_of:
            needed.append(" or ".join(" + ".join(group) for group in self.one_of))
        text = (
            f"put the files of the Hugging Face repository {self.repo_id} ({', '.join(needed)}) in {target}/, "
            f"e.g. `{self.command(target)}`; or run that command without --local-dir to fill the Hugging Face "
            f"cache {hf_hub_cache()}, which lens reads offline; or let lens download them (needs a network, "
            f"and neither {OFFLINE_ENV}=1 nor HF_HUB_OFFLINE=1)"
        )
        return f"{incomplete}; or {text}" if incomplete else text

    def find(self, user_dir: Path | None) -> WeightsStatus:
        incomplete = []
        if user_dir is not None:
            for folder in self.user_folders(user_dir):
                if not folder.is_dir():
                    continue
                lacking = self.missing(folder)
                if not lacking:
                    return WeightsStatus(True, folder, f"user folder {folder}", "")
                note = f"{folder} lacks {', '.join(lacking)}"
                if "model.safetensors" in lacking and (folder / "pytorch_model.bin").is_file():
                    note += " (it has pytorch_model.bin, a pickle, which lens does not load)"
                incomplete.append(note)
        cached = self.cached_folder()
        if cached is not None:
            return WeightsStatus(True, cached, f"Hugging Face cache {hf_hub_cache()}", "")
        return WeightsStatus(False, None, "", self.remedy(user_dir, "; ".join(incomplete)))

    def cached_folder(self) -> Path | None:
        """The snapshot folder of ``revision`` in the Hugging Face cache, when it holds every required file."""
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers depends on it
            return None
        cache = hf_hub_cache()
        if not cache.is_dir():
            return None
        found = try_to_load_from_cache(self.repo_id, self.files[0], cache_dir=cache, revision=self.revision)
        if not isinstance(found, str):  # None (not cached) or _CACHED_NO_EXIST (known to be absent upstream)
            return None
        folder = Path(found).parent  # snapshots/<commit>/: every file of that revision sits beside it
        return None if self.missing(folder) else folder

    def download_blocked(self) -> str | None:
        if offline():
            return f"downloads are off ({OFFLINE_ENV}=1)"
        for var in HF_OFFLINE_ENVS:
            if env_flag(var):
                return f"downloads are off ({var}=1)"
        return None

    def download(self) -> Path:
        """Fetch the needed files into the Hugging Face cache; return the snapshot folder."""
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                self.repo_id,
                revision=self.revision,
                cache_dir=hf_hub_cache(),
                allow_patterns=self.download_files(),
                etag_timeout=10,
            )
        )
        lacking = self.missing(folder)
        if lacking:
            raise OSError(f"{self.repo_id} has no {', '.join(lacking)} (lens loads safetensors weights only)")
        return folder


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0
