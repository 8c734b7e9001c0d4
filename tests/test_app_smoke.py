"""AppTest smoke test of the dashboard entry on a small generated catalog (shape of streamlit-app-action's test)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_overview_renders_catalog_and_encoders(small_catalog_dir: Path, lens_cache_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("LENS_CATALOG", str(small_catalog_dir))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == "24"  # 4 classes x 6 items in the generated catalog
    encoders = next(d.value for d in at.dataframe if "encoder" in d.value.columns)
    assert {"mobilenet-v2", "efficientnet-lite0"} <= set(encoders["encoder"])
    assert "tiny" not in set(encoders["encoder"]), "test encoders are listed only when asked for"


def test_overview_shows_error_for_missing_catalog(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LENS_CATALOG", str(tmp_path / "nowhere"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.error and "LENS_CATALOG" in at.error[0].value
