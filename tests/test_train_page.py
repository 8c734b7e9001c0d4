"""AppTest tests of the Train page (pages/train.py, dashboard/training.py) on the small generated catalog with the
``tiny`` backbone: the recipe list and its defaults, a check that fails starts nothing, a run started in the
background shows on the page, a model trained here can be deleted and leaves the pickers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from test_pages import assert_clean, start  # noqa: E402

from fixtures import make_catalog  # noqa: E402


def wait_until_idle(cache: Path, timeout: float = 180) -> None:
    from lens.build import runner

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and runner(cache) is not None:
        time.sleep(0.2)
    assert runner(cache) is None, "the background run did not end"


def number(at: AppTest, key: str) -> float:
    return at.number_input(key=key).value


def test_train_page_lists_the_recipes_with_their_defaults(dashboard_env: dict[str, Path]) -> None:
    from lens.train import RECIPES, default_config

    at = start("train")
    assert_clean(at)
    recipe = at.selectbox(key="train_recipe")
    assert set(recipe.options) >= {f"{r} — {RECIPES[r].summary}" for r in RECIPES}
    assert recipe.value == "triplet"
    triplet = default_config("triplet")
    assert at.selectbox(key="train_backbone_triplet").value == triplet.backbone  # type: ignore[attr-defined]
    assert number(at, "train_triplet_epochs") == triplet.epochs
    assert number(at, "train_triplet_lr") == pytest.approx(triplet.lr)
    assert number(at, "train_triplet_batch_size") == triplet.batch_size
    assert number(at, "train_triplet_trainable_blocks") == 0
    assert number(at, "train_triplet_augment_views") == 0
    recipe.set_value("autoencoder").run()
    assert_clean(at)
    assert at.selectbox(key="train_autoencoder_variant").value == "ae"
    assert number(at, "train_autoencoder_epochs") == default_config("autoencoder").epochs
    assert not [s for s in at.selectbox if s.key and s.key.startswith("train_backbone")], "no backbone to pick"
    at.selectbox(key="train_autoencoder_variant").set_value("vae").run()
    assert at.text_input(key="train_name").placeholder == "vae"
    assert any("No training run yet" in i.value for i in at.info)


def test_a_failed_check_is_a_message_and_starts_nothing(
    tmp_path: Path, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LENS_CATALOG", str(make_catalog(tmp_path / "six", n_classes=2, per_class=3, size=16)))
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_LABEL", raising=False)
    at = start("train")
    at.selectbox(key="train_backbone_triplet").set_value("tiny").run()
    at.button(key="train_start").click().run()
    assert not at.exception
    assert any("6 items: too small to split" in e.value for e in at.error), [e.value for e in at.error]
    assert not (lens_cache_dir / "runs").exists() and not (lens_cache_dir / "build" / "status.json").exists()


def launch_vae(at: AppTest, name: str) -> None:
    """Fill the form for a quick VAE (2 epochs of 32-px images) saved as ``name`` and start it."""
    at.selectbox(key="train_recipe").set_value("autoencoder").run()
    at.selectbox(key="train_autoencoder_variant").set_value("vae").run()
    at.number_input(key="train_autoencoder_epochs").set_value(2).run()
    at.number_input(key="train_autoencoder_batch_size").set_value(8).run()
    at.number_input(key="train_autoencoder_input_size").set_value(32).run()
    at.text_input(key="train_name").set_value(name).run()
    at.button(key="train_start").click().run()


def test_start_a_run_in_the_background_see_it_and_stop_it(dashboard_env: dict[str, Path]) -> None:
    from dashboard import resources
    from lens.build import stop_build

    cache = dashboard_env["cache"]
    at = start("train")
    launch_vae(at, "page-vae")
    assert_clean(at)
    assert any("Training of 'page-vae' started in the background (pid" in s.value for s in at.success)
    assert any(m.value.startswith("**page") and "autoencoder" in m.value for m in at.markdown)
    plan = (cache / "runs" / "page-vae" / "plan.json").read_text()
    assert '"epochs": 2' in plan and '"variant": "vae"' in plan and '"input_size": 32' in plan
    stop_build(cache)
    wait_until_idle(cache)
    resources.train_runs.clear()  # (the page's own Stop button clears it; this test stopped the run through lens)
    resources.build_views.clear()
    at.run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "held-out P@5" in d.value.columns).set_index("model")
    assert table.loc["page-vae", "state"] in ("stopped", "ready")
    if table.loc["page-vae", "state"] == "stopped":
        assert not at.button(key="train_resume").disabled, "a stopped run can be resumed"


@pytest.mark.slow
def test_a_run_started_on_the_page_finishes_and_shows_its_figures(dashboard_env: dict[str, Path]) -> None:
    cache = dashboard_env["cache"]
    at = start("train")
    launch_vae(at, "page-vae")
    assert_clean(at)
    wait_until_idle(cache)
    at.run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "held-out P@5" in d.value.columns).set_index("model")
    assert table.loc["page-vae", "state"] == "ready" and table.loc["page-vae", "epochs"] == 2
    assert 0 <= float(table.loc["page-vae", "held-out P@5"]) <= 1
    assert at.get("plotly_chart"), "the run's curves"
    from dashboard import resources

    assert "page-vae" in {r["name"] for r in resources.encoders()}, "in every model picker"


def test_delete_a_model_from_the_page(dashboard_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained here (in-process, quick) is deleted through the page, with a confirmation: it leaves the model
    pickers, and its files and cached vectors are gone."""
    import lens.build as build
    from dashboard import resources
    from lens.catalog import load_catalog

    cache = dashboard_env["cache"]
    monkeypatch.setattr(build, "_precompute_map", lambda *args, **kwargs: None)
    step, _ = build.training_step("autoencoder", {"epochs": 1, "batch_size": 8, "input_size": 32}, name="doomed")
    status = build.run_build(load_catalog(dashboard_env["catalog"]), [step], build.BuildOptions(cache))
    assert status["steps"][0]["state"] == "ready"
    resources.encoder_rows.clear()
    at = start("search")
    assert "doomed" in at.selectbox(key="search_model").options
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_past").set_value("doomed").run()
    at.button(key="train_delete").click().run()
    assert any("Delete 'doomed'" in w.value for w in at.warning)
    assert (cache / "models" / "doomed").is_dir(), "nothing deleted before the confirmation"
    at.button(key="train_delete_yes").click().run()
    assert_clean(at)
    assert any("Deleted 'doomed'" in s.value for s in at.success)
    assert not (cache / "models" / "doomed").exists() and not (cache / "embeddings" / "doomed").exists()
    assert "doomed" not in {r["name"] for r in resources.encoders()}
    at.switch_page("pages/search.py").run()
    assert_clean(at)
    assert "doomed" not in at.selectbox(key="search_model").options


def test_the_ray_toggles_are_off_by_default_and_start_the_build_on_ray(
    dashboard_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train page and Overview: "Embed on Ray Data" shows where Ray is installed, is off by default, and hands
    ``ray_workers`` to lens.build (the status then says which path embedded each model: tests/test_distributed.py)."""
    pytest.importorskip("ray")
    import lens.build as build

    asked: list[int] = []

    def refuse(options: build.BuildOptions) -> None:
        asked.append(options.ray_workers)
        raise build.JobRunningError("a build is already running (pid 1, since now)")

    monkeypatch.setattr(build, "start_training", lambda *args, options, **kwargs: refuse(options))
    monkeypatch.setattr(build, "start_build", lambda *args, options, **kwargs: refuse(options))
    at = start("train")
    assert at.toggle(key="train_ray").value is False
    at.button(key="train_start").click().run()
    at.toggle(key="train_ray").set_value(True).run()
    at.button(key="train_start").click().run()
    assert asked == [0, 2] and any("already running" in w.value for w in at.warning)
    at = start("overview")
    assert at.toggle(key="overview_build_ray").value is False
    at.multiselect(key="overview_build_models").set_value(["tiny"])
    at.toggle(key="overview_build_ray").set_value(True).run()
    at.button(key="overview_build").click().run()
    assert asked == [0, 2, 2]
    monkeypatch.setattr("lens.distributed.ray_installed", lambda: False)  # a machine without Ray: no toggle
    at = start("train")
    assert not [t for t in at.toggle if t.key == "train_ray"]
