"""Training runs as jobs (lens/build.py's training section, lens/train/checks.py): the checks every way of starting a
run shares, a run's live history, the percent of a resumed step, deleting a model, listing past runs.

A generated catalog (5 classes x 10 photos), the ``tiny`` encoder as backbone, runs of a few epochs (seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import make_catalog


@pytest.fixture()
def env(build_env, monkeypatch: pytest.MonkeyPatch):  # -> (catalog, cache): conftest's build_env
    # The Projections page's map after each model (UMAP, numba's compilation): not what these tests are about.
    monkeypatch.setattr("lens.build._precompute_map", lambda *args, **kwargs: None)
    return build_env


@pytest.fixture()
def missing_encoder() -> Iterator[str]:
    """``tiny-nowhere``: a registered encoder whose weights file is not on this machine."""
    from lens.encoders import EncoderSpec, Preprocess, WeightsFile, register_encoder
    from lens.encoders._registry import _REGISTRY

    spec = EncoderSpec(
        name="tiny-nowhere",
        family="test",
        dim=8,
        preprocess=Preprocess(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3),
        description="test: weights missing",
    )

    def build(spec, weights_path, *, precision=None):  # noqa: ANN001, ANN202
        raise AssertionError("never built")

    register_encoder(spec, weights=WeightsFile(filename="lens-test-nowhere.pth", pip_name="lens-test-nowhere"))(build)
    try:
        yield "tiny-nowhere"
    finally:
        _REGISTRY.pop("tiny-nowhere", None)


def quick(**more: object) -> dict[str, object]:
    return {"epochs": 3, "batch_size": 20, **more}


# ---------------------------------------------------------------------------------------------------- the checks


def test_check_training_says_what_is_wrong(env, tmp_path: Path, missing_encoder: str) -> None:
    from lens.catalog import load_catalog
    from lens.errors import CatalogError, LensError, WeightsUnavailableError
    from lens.train import default_config
    from lens.train.checks import check_training

    catalog, _ = env
    check_training(catalog, default_config("triplet-tiny"))  # fine: returns quietly
    with pytest.raises(WeightsUnavailableError, match="trains on tiny-nowhere, whose weights are not on this machine"):
        check_training(catalog, default_config("triplet", backbone=missing_encoder))
    with pytest.raises(LensError, match=r"label column 'id' has 0 class\(es\) with at least 3 items"):
        check_training(catalog, default_config("autoencoder"), label_column="id")
    with pytest.raises(CatalogError, match="has no column 'colour'"):
        check_training(catalog, default_config("autoencoder"), label_column="colour")
    small = load_catalog(make_catalog(tmp_path / "small", n_classes=2, per_class=3, size=16))
    with pytest.raises(LensError, match="6 items: too small to split"):
        check_training(small, default_config("triplet-tiny"))


def test_cli_train_runs_the_same_checks(env, capsys: pytest.CaptureFixture[str]) -> None:
    from lens.cli import main

    catalog, cache = env
    code = main(["train", "triplet-tiny", "--catalog", str(catalog.root), "--label", "id", "--epochs", "1"])
    assert code == 2
    assert "label column 'id' has 0 class(es)" in capsys.readouterr().err
    assert not (cache / "runs").exists() and not (cache / "models").exists()


def test_a_failed_check_starts_nothing(env, missing_encoder: str) -> None:
    from lens.build import BuildOptions, runner, start_training
    from lens.errors import LensError

    catalog, cache = env
    with pytest.raises(LensError, match="weights are not on this machine"):
        start_training(catalog, "triplet", {"backbone": missing_encoder}, options=BuildOptions(cache))
    with pytest.raises(LensError, match="has no setting nonsense"):
        start_training(catalog, "triplet-tiny", {"nonsense": 1}, options=BuildOptions(cache))
    with pytest.raises(LensError, match="--epochs must be a positive integer"):
        start_training(catalog, "triplet-tiny", {"epochs": 0}, options=BuildOptions(cache))
    from lens.build import _lock

    lock = _lock(cache)
    lock.acquire("build")
    try:
        with pytest.raises(
            LensError, match=f"cannot start training triplet-tiny: a build is running \\(pid {os.getpid()}"
        ):
            start_training(catalog, "triplet-tiny", {"epochs": 1}, options=BuildOptions(cache))
    finally:
        lock.release()
    assert runner(cache) is None
    assert not (cache / "runs").exists() and not (cache / "build" / "status.json").exists()


# ---------------------------------------------------------------------------------------------------- resume


def test_a_resumed_step_counts_the_epochs_already_done(env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after epoch 1 of 3, the next build starts its training at 1/3 done, not at 0 (the issue's bug: its
    percent read low), and its ETA comes from its own pace."""
    import lens.build as build
    import lens.train.loop as loop
    from lens.jobs import CancelFlag

    catalog, cache = env
    step, _ = build.training_step("triplet-tiny", quick())
    monkeypatch.setattr(build, "STATUS_WRITE_EVERY_S", 0.0)  # every progress update reaches the status file
    seen: list[dict] = []
    original_write = build.write_status

    def spy(path, status):  # noqa: ANN001, ANN202
        seen.extend(dict(e) for e in status["steps"] if e.get("phase") == "train")
        return original_write(path, status)

    monkeypatch.setattr(build, "write_status", spy)
    cancel = CancelFlag()
    original_save = loop._save_checkpoint

    def save_then_cancel(path, model, optimizer, epoch, history, config):  # noqa: ANN001, ANN202
        original_save(path, model, optimizer, epoch, history, config)
        cancel.event.set()  # like a SIGTERM after the first epoch: the build stops at its next safe point

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_cancel)
    first = build.run_build(catalog, [step], build.BuildOptions(cache), cancel=cancel)
    assert first["state"] == "cancelled"
    assert len(loop.read_live_history(cache / "runs" / step.name)) == 1
    assert max(e["percent"] for e in seen) <= 100 / 3 + 0.1

    monkeypatch.setattr(loop, "_save_checkpoint", original_save)
    seen.clear()
    second = build.run_build(catalog, [step], build.BuildOptions(cache))
    assert second["state"] == "finished" and second["steps"][0]["state"] == "ready"
    percents = [e["percent"] for e in seen]
    assert percents and min(percents) >= 200 / 3 - 0.1, percents  # epoch 2 of 3 done: 67 %, not 33 %
    assert percents[-1] == pytest.approx(100.0)
    history = build.read_history(step.name, build.BuildOptions(cache))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3] and "val_p@5" in history[0]


# ---------------------------------------------------------------------------------------------------- runs, delete


def test_past_runs_and_delete(env) -> None:
    import lens.build as build
    from lens.encoders import list_encoders
    from lens.errors import LensError
    from lens.index import cache_state

    catalog, cache = env
    options = build.BuildOptions(cache)
    step, _ = build.training_step("triplet-tiny", quick(epochs=2), name="my-triplet")
    status = build.run_build(catalog, [step], options)
    assert status["steps"][0]["state"] == "ready"
    runs = {r.name: r for r in build.list_runs(options)}
    run = runs["my-triplet"]
    assert run.state == "ready" and run.recipe == "triplet" and run.epochs_done == 2
    assert run.settings["epochs"] == 2 and run.settings["backbone"] == "tiny"
    assert 0.0 <= run.metrics["precision@5"] <= 1.0 and run.saved
    assert cache_state(catalog, "my-triplet", cache).indexed

    with pytest.raises(LensError, match="not a trained model; only models trained"):
        build.delete_model("tiny", options)
    lock = build._lock(cache)
    lock.acquire("build")
    try:
        with pytest.raises(
            build.JobRunningError, match=f"cannot delete 'my-triplet' while a build is running \\(pid {os.getpid()}"
        ):
            build.delete_model("my-triplet", options)
    finally:
        lock.release()
    assert "my-triplet" in {i.name for i in list_encoders()}

    removed = build.delete_model("my-triplet", options)
    assert cache / "models" / "my-triplet" in removed and cache / "runs" / "my-triplet" in removed
    assert not cache_state(catalog, "my-triplet", cache).embedded
    assert not (cache / "indexes" / "my-triplet").exists()
    assert "my-triplet" not in {i.name for i in list_encoders()}
    assert "my-triplet" not in {r.name for r in build.list_runs(options)}
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")], "no leftover hidden folder"


def test_start_and_resume_go_through_one_build_step(env, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_training records the run (job.json, plan.json) and starts the build of its one step; a run stopped after
    epoch 1 is resumed from its checkpoint with the settings first asked; a new start discards a stale run folder.
    The detached build is replaced by the same build run in this process."""
    import lens.build as build
    import lens.train.loop as loop
    from lens.catalog import load_catalog
    from lens.jobs import CancelFlag

    catalog, cache = env
    options = build.BuildOptions(cache)
    started: list[dict] = []
    cancel_after_first_epoch = {"on": True}
    original_save = loop._save_checkpoint

    def in_process(catalog_root, *, label=None, options=None, models=None, plan=None, extra_args=()):  # noqa: ANN001, ANN202
        started.append({"catalog": str(catalog_root), "label": label, "models": models, "plan": str(plan)})
        cancel = CancelFlag()

        def save(path, model, optimizer, epoch, history, config):  # noqa: ANN001, ANN202
            original_save(path, model, optimizer, epoch, history, config)
            if cancel_after_first_epoch["on"]:
                cancel.event.set()

        monkeypatch.setattr(loop, "_save_checkpoint", save)
        steps = build.make_plan(build.load_plan(plan), models=models)
        build.run_build(load_catalog(catalog_root, label_column=label), steps, options, cancel=cancel)
        return 4242

    monkeypatch.setattr(build, "start_build", in_process)
    folder = cache / "runs" / "run-a"
    folder.mkdir(parents=True)
    (folder / "checkpoint.history.json").write_text('{"history": [{"epoch": 1, "loss": 9}]}')  # a stale run's
    pid, step = build.start_training(catalog, "triplet-tiny", quick(), name="run-a", options=options)
    assert pid == 4242 and step.name == "run-a" and started[-1]["models"] == "none"
    assert started[-1]["label"] == "articleType"
    job = (folder / "job.json").read_text()
    assert '"recipe": "triplet-tiny"' in job and '"epochs": 3' in job
    assert [int(r["epoch"]) for r in build.read_history("run-a", options)] == [1], "stopped after epoch 1"
    assert [r.state for r in build.list_runs(options) if r.name == "run-a"] == ["stopped"]

    cancel_after_first_epoch["on"] = False
    pid, step = build.resume_training("run-a", options)
    assert [int(r["epoch"]) for r in build.read_history("run-a", options)] == [1, 2, 3]
    run = next(r for r in build.list_runs(options) if r.name == "run-a")
    assert run.state == "ready" and run.settings["epochs"] == 3
    with pytest.raises(build.LensError, match="is trained already"):
        build.resume_training("run-a", options)
    with pytest.raises(build.LensError, match="a trained model named 'run-a' exists already"):
        build.start_training(catalog, "triplet-tiny", quick(), name="run-a", options=options)
