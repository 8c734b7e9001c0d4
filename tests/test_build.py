"""The background build (lens/build.py, lens/jobs.py): plan order and skipping, status transitions, resume from lens's
caches, a kill -9 and a SIGTERM of a real runner, the lock, ``python -m lens status``.

Everything runs on a generated catalog with the ``tiny`` encoder and quick recipes (a few epochs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: A quick plan: the tiny encoder, then two quick recipes on it (seconds in all).
QUICK_PLAN = {
    "encoders": ["tiny"],
    "recipes": [
        {"recipe": "triplet-tiny", "settings": {"epochs": 2, "batch_size": 20}},
        {
            "name": "vae",
            "recipe": "autoencoder",
            "settings": {"variant": "vae", "epochs": 1, "batch_size": 8, "input_size": 32},
        },
    ],
}


def quick_steps(plan: dict | None = None):  # -> list[BuildStep]
    from lens.build import make_plan

    return make_plan(plan or QUICK_PLAN)


def options(cache: Path):  # -> BuildOptions
    from lens.build import BuildOptions

    return BuildOptions(cache_dir=cache)


def states(status: dict) -> dict[str, str]:
    return {e["name"]: e["state"] for e in status["steps"]}


# ---------------------------------------------------------------------------------------------------- the plan


def test_default_plan_order_matches_the_recipe_registry() -> None:
    from lens.build import DEFAULT_PLAN, make_plan, recipe_step

    steps = make_plan()
    names = [s.name for s in steps]
    assert names[:3] == ["efficientnet-lite0", "mobilenet-v2", "efficientnet-lite2"]  # the default model first
    assert names[3] == "text-align"  # text search as early as possible
    assert names[3:] == [
        "text-align",
        "proxy-efficientnet-lite2",
        "proxy-ensemble",
        "triplet-efficientnet-lite0",
        "triplet-mobilenet-v2",
        "triplet-efficientnet-lite2",
        "vae",
        "autoencoder",
        "simclr-mobilenet-v2",
        "mobilenet-small",
    ]
    # The plan is data; what it says of each recipe (model name, needs) is what the recipe registry says.
    for entry, step in zip(DEFAULT_PLAN["recipes"], steps[3:]):
        derived = recipe_step(entry["recipe"], entry.get("settings"))
        assert (step.name, set(step.needs)) == (derived.name, set(derived.needs)), entry


def test_plan_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from lens.build import make_plan
    from lens.errors import LensError

    monkeypatch.setenv("LENS_DEFAULT_MODEL", "efficientnet-lite2")
    assert [s.name for s in make_plan(recipes="none")] == ["efficientnet-lite2", "efficientnet-lite0", "mobilenet-v2"]
    steps = make_plan(models="tiny", recipes="vae,triplet-tiny")
    assert [(s.name, s.kind) for s in steps] == [("tiny", "encoder"), ("vae", "recipe"), ("triplet-tiny", "recipe")]
    assert steps[1].settings == {"variant": "vae"} and steps[2].needs == ("tiny",)
    with pytest.raises(LensError, match="Unknown recipe 'nope'"):
        make_plan(models="none", recipes="nope")


def test_steps_without_weights_are_skipped_with_the_reason(build_env) -> None:
    from lens.build import BuildStep, format_state, plan_status, run_build
    from lens.encoders import list_encoders

    catalog, cache = build_env
    missing = [i.name for i in list_encoders(include_test=False) if not i.available and i.spec.family != "trained"]
    if not missing:
        pytest.skip("every pretrained encoder has its weights here")
    steps = [
        BuildStep("tiny"),
        BuildStep(missing[0]),
        BuildStep("triplet-x", "recipe", f"triplet-{missing[0]}", {"epochs": 1}, (missing[0],)),
    ]
    status = run_build(catalog, steps, options(cache))
    assert states(status) == {"tiny": "ready", missing[0]: "skipped", "triplet-x": "skipped"}
    reasons = {e["name"]: e.get("reason") for e in status["steps"]}
    assert reasons[missing[0]] == "weights missing" and reasons["triplet-x"] == f"weights missing: {missing[0]}"
    views, _ = plan_status(catalog, steps, options(cache))
    assert [format_state(v) for v in views] == ["ready", "weights missing", f"weights missing: {missing[0]}"]


def test_a_built_model_comes_with_the_projection_pages_default_map(build_env) -> None:
    """After a model is ready the build computes the UMAP map the Projections page opens with (cached on disk)."""
    from lens.build import BuildStep, run_build
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.projection import cached_projection, default_map_params

    catalog, cache = build_env
    status = run_build(catalog, [BuildStep("tiny")], options(cache))
    assert states(status) == {"tiny": "ready"}
    embeddings = embed_catalog(catalog, create_encoder("tiny"), cache_dir=cache)
    params = default_map_params(len(catalog))
    assert params.max_points is None and params.method == "umap"  # 50 items: the page maps them all
    projection = cached_projection(embeddings, params, cache_dir=cache)
    assert projection is not None and len(projection) == len(catalog)
    assert "UMAP map ready" in (cache / "build" / "build.log").read_text()


# ---------------------------------------------------------------------------------------------------- the job


def test_status_transitions_and_a_failing_step_does_not_stop_the_build(build_env, monkeypatch) -> None:
    import lens.build as build

    catalog, cache = build_env
    seen: list[tuple[str, str]] = []
    original = build.write_status

    def spy(path, status):  # noqa: ANN001, ANN202
        for entry in status["steps"]:
            if not seen or (entry["name"], entry["state"]) not in seen:
                seen.append((entry["name"], entry["state"]))
        return original(path, status)

    monkeypatch.setattr(build, "write_status", spy)
    bad = build.BuildStep("triplet-tiny", "recipe", "triplet-tiny", {"epochs": 0}, ("tiny",))
    steps = [build.BuildStep("tiny"), bad, build.make_plan(QUICK_PLAN)[-1]]
    status = build.run_build(catalog, steps, options(cache))
    assert status["state"] == "finished" and "1 step(s) failed: triplet-tiny" in status["message"]
    assert states(status) == {"tiny": "ready", "triplet-tiny": "failed", "vae": "ready"}
    failed = next(e for e in status["steps"] if e["name"] == "triplet-tiny")
    assert "--epochs must be a positive integer" in failed["reason"]
    for name in ("tiny", "vae"):
        assert [s for n, s in seen if n == name] == ["queued", "running", "ready"], seen
    on_disk = json.loads((cache / "build" / "status.json").read_text())
    assert on_disk["pid"] == os.getpid() and on_disk["finished"] and states(on_disk) == states(status)
    assert "vae: ready in" in (cache / "build" / "build.log").read_text()


def test_a_second_build_reuses_every_finished_step(build_env, monkeypatch) -> None:
    import lens.embed
    from lens.build import run_build
    from lens.index import cache_state

    catalog, cache = build_env
    first = run_build(catalog, quick_steps(), options(cache))
    assert set(states(first).values()) == {"ready"}
    calls: list[str] = []
    original = lens.embed.embed_catalog

    def counting(catalog, encoder, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(encoder.name)
        return original(catalog, encoder, **kwargs)

    monkeypatch.setattr(lens.embed, "embed_catalog", counting)
    second = run_build(catalog, quick_steps(), options(cache))
    assert calls == [] and set(states(second).values()) == {"ready"}
    assert {e.get("reason") for e in second["steps"]} == {"already built"}
    # One index gone: only that step runs again, from the cached vectors (no new training).
    assert cache_state(catalog, "vae", cache).indexed
    for ann in (cache / "indexes" / "vae").glob("*"):
        ann.unlink()
    trained = (cache / "models" / "vae" / "model.safetensors").stat().st_mtime_ns
    third = run_build(catalog, quick_steps(), options(cache))
    assert calls == ["vae"] and set(states(third).values()) == {"ready"}
    assert (cache / "models" / "vae" / "model.safetensors").stat().st_mtime_ns == trained


def test_one_build_at_a_time(build_env, capsys: pytest.CaptureFixture[str]) -> None:
    from lens.build import _lock, run_build, start_build
    from lens.cli import main
    from lens.jobs import JobRunningError

    catalog, cache = build_env
    holder = _lock(cache)
    holder.acquire("build")
    try:
        with pytest.raises(JobRunningError, match=rf"already running \(pid {os.getpid()}, since "):
            run_build(catalog, quick_steps(), options(cache))
        with pytest.raises(JobRunningError, match="already running"):
            start_build(catalog.root, options=options(cache))
        assert main(["build", "--catalog", str(catalog.root), "--models", "tiny", "--recipes", "none", "--detach"]) == 2
        assert f"error: a build is already running (pid {os.getpid()}" in capsys.readouterr().err
    finally:
        holder.release()
    assert not (cache / "build" / "status.json").exists(), "a refused build writes no status"


def test_lens_status_lines(build_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lens.build import _lock
    from lens.cli import main
    from lens.jobs import write_status

    catalog, cache = build_env
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(QUICK_PLAN))
    args = ["--catalog", str(catalog.root), "--plan", str(plan)]
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == [
        "tiny          queued",
        "triplet-tiny  queued",
        "vae           queued",
    ]
    # A live runner (this process holds the lock) in the middle of a step.
    lock = _lock(cache)
    lock.acquire("build")
    try:
        write_status(
            cache / "build" / "status.json",
            {
                "fingerprint": catalog.fingerprint(),
                "pid": os.getpid(),
                "state": "running",
                "steps": [
                    {"name": "tiny", "state": "running", "percent": 40.0, "eta_s": 80, "phase": "embed"},
                    {"name": "triplet-tiny", "state": "failed", "reason": "no space left\nmore"},
                ],
            },
        )
        assert main(["status", *args]) == 0
        out = capsys.readouterr().out
        assert "tiny          building 40 % (ETA 1m20s)" in out and "triplet-tiny  failed: no space left\n" in out
    finally:
        lock.release()
    assert main(["status", *args]) == 0  # the runner is gone while its status still says running
    assert "build interrupted" in capsys.readouterr().err
    assert main(["build", *args, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == [
        "tiny          ready",
        "triplet-tiny  ready",
        "vae           ready",
    ]


def test_disk_full_fails_the_step_with_the_message_and_stops(build_env, monkeypatch) -> None:
    import errno

    import lens.delta
    from lens.build import run_build

    catalog, cache = build_env

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(cache / "indexes"))

    monkeypatch.setattr(lens.delta, "update_index", full)  # what the build indexes with
    status = run_build(catalog, quick_steps(), options(cache))
    assert states(status) == {"tiny": "failed", "triplet-tiny": "queued", "vae": "queued"}
    assert status["state"] == "failed" and status["message"].startswith("disk full: No space left on device")


def test_a_deleted_run_folder_under_a_live_job_is_recreated(build_env, monkeypatch) -> None:
    """The run folder vanishes half-way through training: the checkpoint and history are written again."""
    import shutil

    import lens.train.loop as loop
    from lens.build import run_build

    catalog, cache = build_env
    original = loop._save_checkpoint

    def delete_then_save(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        shutil.rmtree(path.parent, ignore_errors=True)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(loop, "_save_checkpoint", delete_then_save)
    status = run_build(catalog, quick_steps(), options(cache))
    assert set(states(status).values()) == {"ready"}
    assert (cache / "runs" / "triplet-tiny" / "history.csv").is_file()


# ---------------------------------------------------------------------------------------------------- a real runner


def _start_runner(catalog_dir: Path, cache: Path, plan: Path) -> subprocess.Popen:
    env = {**os.environ, "LENS_CACHE_DIR": str(cache), "LENS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("LENS_MODELS_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "lens", "build", "--catalog", str(catalog_dir), "--plan", str(plan), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_training(proc: subprocess.Popen, status_file: Path, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the runner ended before training started"
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        entry = next((e for e in status.get("steps", []) if e["name"] == name), {})
        if (
            entry.get("phase") == "train"
            and entry.get("percent", 0) > 0
            and (status_file.parent.parent / "runs" / name / "checkpoint.pt").exists()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} did not start training within {timeout}s")


SLOW_EPOCHS = 120
SLOW_TRAIN_PLAN = {
    "encoders": ["tiny"],
    "recipes": [{"recipe": "triplet-tiny", "settings": {"epochs": SLOW_EPOCHS, "batch_size": 20}}],
}


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["kill-9", "sigterm"]
)
def test_a_stopped_runner_leaves_a_usable_state_and_the_next_build_finishes(build_env, tmp_path: Path, sig) -> None:
    from lens.build import make_plan, plan_status, run_build
    from lens.encoders.trained import find_trained_models
    from lens.store import verify_array

    torch = pytest.importorskip("torch")
    catalog, cache = build_env
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(SLOW_TRAIN_PLAN))
    proc = _start_runner(catalog.root, cache, plan)
    try:
        _wait_for_training(proc, cache / "build" / "status.json", "triplet-tiny")
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    steps = make_plan(SLOW_TRAIN_PLAN)
    views, status = plan_status(catalog, steps, options(cache))
    assert [(v.name, v.state) for v in views] == [("tiny", "ready"), ("triplet-tiny", "queued")]
    assert status is not None
    if sig == signal.SIGKILL:
        assert status["state"] == "interrupted"
    else:
        assert proc.returncode == 1 and status["state"] == "cancelled"
        assert next(e for e in status["steps"] if e["name"] == "triplet-tiny")["reason"].startswith("cancelled")
    assert "triplet-tiny" not in find_trained_models(cache / "models"), "no half-trained model is published"
    for npy in (cache / "embeddings").rglob("*.npy"):
        assert verify_array(npy) is not None  # every published embedding verifies
    # The next build takes the lock (the kernel released it), resumes training from the checkpoint and finishes.
    checkpoint = torch.load(cache / "runs" / "triplet-tiny" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] < SLOW_EPOCHS - 1, "stopped half-way through training"
    final = run_build(catalog, steps, options(cache))
    assert states(final) == {"tiny": "ready", "triplet-tiny": "ready"}
    history = (cache / "runs" / "triplet-tiny" / "history.csv").read_text().strip().splitlines()
    assert len(history) == SLOW_EPOCHS + 1  # header + every epoch, the ones before the stop included


def test_detached_build_returns_at_once_and_finishes(build_env, tmp_path: Path) -> None:
    from lens.build import make_plan, plan_status, runner, start_build

    catalog, cache = build_env
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"encoders": ["tiny"], "recipes": []}))
    pid = start_build(catalog.root, options=options(cache), plan=plan)
    # It returned while the detached runner holds the build (no wall-clock bound: those fail on a loaded machine).
    holder = runner(cache)
    assert pid > 0 and holder is not None and holder["pid"] == pid
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        views, status = plan_status(catalog, make_plan({"encoders": ["tiny"]}), options(cache))
        if views[0].state == "ready" and runner(cache) is None:
            break
        time.sleep(0.2)
    assert views[0].state == "ready" and status and status["state"] == "finished" and status["pid"] == pid
    assert "tiny: ready in" in (cache / "build" / "build.log").read_text()


def test_a_model_save_that_dies_half_way_leaves_the_previous_model(build_env, monkeypatch) -> None:
    """save_trained_model publishes weights and config together (a staging folder renamed into place)."""
    import safetensors.torch
    import torch

    from lens.encoders.trained import find_trained_models, read_model_config, save_trained_model

    _, cache = build_env
    models = cache / "models"
    config = {"kind": "image", "arch": {"type": "embedder"}, "dim": 2, "preprocess": {}, "recipe": "unit"}
    save_trained_model("unit-model", {"w": torch.zeros(2)}, {**config, "version": 1}, models_dir=models)

    def dies(tensors, path, metadata=None):  # noqa: ANN001, ANN202
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space left"):
        patch.setattr(safetensors.torch, "save_file", dies)
        save_trained_model("unit-model", {"w": torch.ones(2)}, {**config, "version": 2}, models_dir=models)
    assert read_model_config(models / "unit-model")["version"] == 1
    assert safetensors.torch.load_file(str(models / "unit-model" / "model.safetensors"))["w"].sum() == 0
    assert list(find_trained_models(models)) == ["unit-model"] and [p.name for p in models.iterdir()] == ["unit-model"]
    save_trained_model("unit-model", {"w": torch.ones(2)}, {**config, "version": 2}, models_dir=models)
    assert read_model_config(models / "unit-model")["version"] == 2 and len(list(models.iterdir())) == 1


@pytest.mark.slow  # ~20 s: the two members train with their recipes' defaults (40 and 20 epochs)
def test_the_ensemble_step_trains_its_members_then_joins_them(build_env) -> None:
    """The default plan's proxy-ensemble step on the tiny encoder: its missing members are trained by their own
    recipes (defaults), saved under their names, and the joined model is ready and embeds like its members."""
    from lens.build import make_plan, run_build
    from lens.encoders import create_encoder
    from lens.encoders.trained import find_trained_models

    catalog, cache = build_env
    plan = {
        "encoders": ["tiny"],
        "recipes": [{"recipe": "proxy-ensemble", "settings": {"members": "proxy-tiny,triplet-tiny"}}],
    }
    steps = make_plan(plan)
    assert steps[-1].needs == ("tiny",)
    status = run_build(catalog, steps, options(cache))
    assert states(status) == {"tiny": "ready", "proxy-ensemble": "ready"}
    assert {"proxy-tiny", "triplet-tiny", "proxy-ensemble"} <= set(find_trained_models())
    ensemble = create_encoder("proxy-ensemble")
    assert ensemble.dim == create_encoder("proxy-tiny").dim + create_encoder("triplet-tiny").dim
