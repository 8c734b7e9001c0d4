"""The background build: every model of the workbench on one catalog, as a resumable job.

A build plan is an ordered list of steps. The default (:data:`DEFAULT_PLAN`): the default model's embeddings and
Annoy index first (the first search), then the other pretrained encoders, then every recipe trained on the catalog
with its default settings: ``text-align`` first (text search), ``proxy-efficientnet-lite2``, ``proxy-ensemble``
(the best image model: it trains ``proxy-mobilenet-v2`` and ``proxy-efficientnet-lite0`` and joins the three), the
triplet heads, ``vae`` and ``autoencoder``, ``simclr-mobilenet-v2``, ``mobilenet-small``. A step whose weights (or whose backbone's) are not on this machine is
skipped, with that reason.

The job (:func:`run_build`) runs the steps in order under one lock per cache (:class:`lens.jobs.JobLock`), and keeps
``<cache>/build/status.json`` (per step: queued / running with percent and ETA / ready / failed with why / skipped
with why; the runner's pid; timestamps) and ``<cache>/build/build.log``. A finished step is recognised from lens's
own caches (embeddings, Annoy index, trained model folder), not from the status file, so a new build after a crash,
a ``kill -9`` or a cancel reuses every finished artefact, and a training step resumes from its last epoch checkpoint.
Everything a step publishes is written atomically by lens (:mod:`lens.store`, :func:`lens.encoders.trained.
save_trained_model`), so a killed build never leaves a half-written model, embedding or index behind.

``python -m lens build [--models ...] [--recipes ...] [--detach]`` and ``python -m lens status`` are this module;
the dashboard's Overview reads :func:`plan_status` and starts :func:`start_build`.
"""

from __future__ import annotations

import errno
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lens.catalog import Catalog
from lens.errors import LensError, UnknownEncoderError, WeightsUnavailableError
from lens.jobs import (
    CancelFlag,
    JobCancelled,
    JobLock,
    JobLog,
    JobRunningError,
    format_duration,
    pid_alive,
    python_module_argv,
    read_status,
    start_detached,
    tail,
    terminate,
    wait_for_holder,
    write_status,
)
from lens.store import read_json, resolve_cache_dir, utc_now, write_json

if TYPE_CHECKING:  # lens.embed pulls in torch: imported where it runs, so `lens build --detach` starts fast
    from lens.embed import EmbeddingSet

__all__ = [
    "DEFAULT_PLAN",
    "BuildOptions",
    "BuildStep",
    "JobRunningError",
    "StepView",
    "build_log",
    "format_state",
    "load_plan",
    "make_plan",
    "plan_status",
    "run_build",
    "runner",
    "start_build",
    "stop_build",
]

MINILM = "all-MiniLM-L6-v2"  #: the text model text-align needs (lens.encoders.minilm.MINILM_NAME)
STATUS_WRITE_EVERY_S = 1.0  #: progress is written at most this often (a state change is written at once)

#: The default plan, as data: ``encoders`` (pretrained, in order; the first is the default model) and ``recipes``
#: (``name``: the model it saves; ``recipe``: what ``python -m lens train`` takes; ``settings``: overrides of the
#: recipe's defaults; ``needs``: encoders, or the text model, that must be available). ``--plan FILE`` takes a JSON
#: file of the same shape.
DEFAULT_PLAN: dict[str, Any] = {
    "encoders": ["efficientnet-lite0", "mobilenet-v2", "efficientnet-lite2"],
    "recipes": [
        # text search (docs/training.md "4. Text side"): linear projections of concat-colour (the three CNNs above
        # + a colour histogram, computed in this step) and of MiniLM + a bag of the titles' words
        {"name": "text-align", "recipe": "text-align", "needs": ["concat-colour", MINILM]},
        # the best image model (docs/training.md): a Proxy-Anchor head on the frozen efficientnet-lite2
        {"name": "proxy-efficientnet-lite2", "recipe": "proxy-efficientnet-lite2", "needs": ["efficientnet-lite2"]},
        # the best image model (docs/training.md, issue 12 section 6): the Proxy-Anchor heads on the three CNNs
        # joined into one vector (mean cosine); trains proxy-mobilenet-v2 and proxy-efficientnet-lite0 first
        {
            "name": "proxy-ensemble",
            "recipe": "proxy-ensemble",
            "needs": ["mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"],
        },
        {"name": "triplet-efficientnet-lite0", "recipe": "triplet-efficientnet-lite0", "needs": ["efficientnet-lite0"]},
        {"name": "triplet-mobilenet-v2", "recipe": "triplet-mobilenet-v2", "needs": ["mobilenet-v2"]},
        {"name": "triplet-efficientnet-lite2", "recipe": "triplet-efficientnet-lite2", "needs": ["efficientnet-lite2"]},
        {"name": "vae", "recipe": "autoencoder", "settings": {"variant": "vae"}},
        {"name": "autoencoder", "recipe": "autoencoder"},
        {"name": "simclr-mobilenet-v2", "recipe": "simclr-mobilenet-v2", "needs": ["mobilenet-v2"]},
        {"name": "mobilenet-small", "recipe": "mobilenet-small"},
    ],
}


@dataclass(frozen=True)
class BuildStep:
    """One step of a build: embed + index a pretrained encoder, or train a recipe then embed + index its model.

    Attributes:
        name: the encoder name the step makes usable.
        kind: ``"encoder"`` or ``"recipe"``.
        recipe: the recipe spelling (``triplet-mobilenet-v2``) of a ``"recipe"`` step.
        settings: overrides of the recipe's default settings.
        needs: encoders (or the text model) that must be available for the step to run.
    """

    name: str
    kind: str = "encoder"
    recipe: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()


@dataclass
class BuildOptions:
    """Where a build reads and writes, its seed (the same defaults as ``python -m lens train``), and which path
    embeds the catalog: this process (``ray_workers`` 0, the default) or Ray Data with ``ray_workers`` encoder
    actors (:mod:`lens.distributed`; Ray starts on this machine, or joins ``ray_address``)."""

    cache_dir: str | os.PathLike | None = None
    weights_dir: str | os.PathLike | None = None
    models_dir: str | os.PathLike | None = None
    batch_size: int | None = None
    seed: int = 0
    ray_workers: int = 0
    ray_address: str | None = None

    def embedding_path(self) -> str:
        """How this build embeds: ``local``, or ``Ray Data, N workers`` (``at ADDRESS``)."""
        if not self.ray_workers:
            return "local"
        where = f" at {self.ray_address}" if self.ray_address else ""
        return f"Ray Data, {self.ray_workers} worker{'s' if self.ray_workers > 1 else ''}{where}"

    def cache(self) -> Path:
        return resolve_cache_dir(self.cache_dir)

    def models(self) -> Path:
        """``--models-dir``, else ``$LENS_MODELS_DIR``, else ``<cache>/models`` (of this build's cache)."""
        if self.models_dir is not None:
            return Path(self.models_dir).expanduser()
        env = os.environ.get("LENS_MODELS_DIR")
        return Path(env).expanduser() if env else self.cache() / "models"


# --------------------------------------------------------------------------------------------------------------
# The plan


def load_plan(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The plan in the JSON file at ``path`` (:data:`DEFAULT_PLAN`'s shape), or the default plan."""
    if path is None:
        return DEFAULT_PLAN
    import json

    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LensError(f"cannot read the build plan {path}: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("encoders", []), list):
        raise LensError(f"build plan {path} must be a JSON object with 'encoders' (names) and 'recipes' (objects).")
    return plan


def recipe_step(spelling: str, settings: Mapping[str, Any] | None = None) -> BuildStep:
    """The step that trains ``spelling`` (``triplet-mobilenet-v2``, ``autoencoder``...) with its default settings
    plus ``settings``; the model name and the needs come from the recipe registry (imports torch)."""
    config = step_config(BuildStep(spelling, "recipe", spelling, dict(settings or {})))
    backbone = getattr(config, "backbone", None)
    needs: tuple[str, ...] = (str(backbone),) if backbone else ()
    if hasattr(config, "backbones"):  # proxy-ensemble: every member's backbone
        needs = tuple(config.backbones())
    if config.recipe == "text-align":
        needs += (MINILM,)
    return BuildStep(config.model_name(), "recipe", spelling, dict(settings or {}), needs)


def step_config(step: BuildStep, **overrides: Any) -> Any:
    """The training config (:class:`lens.train.TrainConfig`) of a recipe step: the recipe's defaults, the step's
    settings, then ``overrides``. A ``backbone`` setting picks the backbone of a recipe that takes one (text-align's
    image encoder, or a bare ``triplet``) — the same as naming it in the spelling (imports torch)."""
    from lens.train import default_config

    settings = {**dict(step.settings), **overrides}
    backbone = settings.pop("backbone", None)
    return default_config(step.recipe, None if backbone is None else str(backbone), **settings)


def _entry_step(entry: Mapping[str, Any]) -> BuildStep:
    """A plan entry: taken as written when it names its model, else derived from the recipe registry."""
    if "name" in entry:
        return BuildStep(
            str(entry["name"]),
            "recipe",
            str(entry.get("recipe", entry["name"])),
            dict(entry.get("settings") or {}),
            tuple(entry.get("needs") or ()),
        )
    return recipe_step(str(entry.get("recipe", "")), entry.get("settings"))


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() for item in items if item.strip()]
    return [] if names == ["none"] else names


def make_plan(
    plan: Mapping[str, Any] | None = None,
    *,
    models: str | Sequence[str] | None = None,
    recipes: str | Sequence[str] | None = None,
    default_model: str | None = None,
) -> list[BuildStep]:
    """The ordered steps of ``plan`` (default :data:`DEFAULT_PLAN`).

    Args:
        plan: ``{"encoders": [...], "recipes": [{...}, ...]}``.
        models: pretrained encoders instead of the plan's (comma-separated or a list; ``"none"``: none).
        recipes: recipes instead of the plan's: a plan recipe's model name (``vae``) or any ``train`` spelling
            (``triplet-efficientnet-lite0``), with its default settings; ``"none"``: none.
        default_model: put this encoder first (``$LENS_DEFAULT_MODEL`` when not given).

    Raises:
        LensError: an unknown recipe (the message lists them).
    """
    plan = plan or DEFAULT_PLAN
    encoders = _names(models)
    if encoders is None:
        encoders = [str(name) for name in plan.get("encoders", [])]
        first = default_model or os.environ.get("LENS_DEFAULT_MODEL", "").strip()
        if first in encoders:
            encoders = [first, *(n for n in encoders if n != first)]
    steps = [BuildStep(name) for name in dict.fromkeys(encoders)]
    entries = [dict(e) for e in plan.get("recipes", [])]
    wanted = _names(recipes)
    if wanted is None:
        steps += [_entry_step(entry) for entry in entries]
    else:
        by_name = {str(e.get("name", e.get("recipe"))): e for e in entries}
        for name in dict.fromkeys(wanted):
            steps.append(_entry_step(by_name[name]) if name in by_name else recipe_step(name))
    seen: set[str] = set()
    unique = []
    for step in steps:
        if step.name not in seen:
            seen.add(step.name)
            unique.append(step)
    return unique


def unavailable_reason(step: BuildStep, weights_dir: str | os.PathLike | None = None) -> str:
    """Why ``step`` cannot run on this machine (``"weights missing: X"``), or ``""`` when it can."""
    from lens.encoders import encoder_status

    for need in ((step.name,) if step.kind == "encoder" else ()) + tuple(step.needs):
        if need == MINILM:
            from lens.encoders.minilm import minilm_folder

            try:
                minilm_folder()
            except WeightsUnavailableError:
                return f"weights missing: {MINILM}"
            continue
        try:
            status = encoder_status(need, weights_dir)
        except UnknownEncoderError:
            return f"unknown encoder {need}"
        if not status.available:
            return "weights missing" if need == step.name else f"weights missing: {need}"
    return ""


def _is_ready(step: BuildStep, catalog: Catalog, options: BuildOptions) -> bool:
    """Whether lens's caches already hold what ``step`` makes: the model (trained steps), its embeddings of this
    catalog and their Annoy index. Reads file names and sidecars only."""
    from lens.encoders import get_spec
    from lens.index import cache_state

    precision = None
    if step.kind == "recipe":
        from lens.encoders.trained import find_trained_models

        if step.name not in find_trained_models(options.models()):
            return False
    else:
        try:
            precision = get_spec(step.name).precision
        except UnknownEncoderError:
            return False
    state = cache_state(catalog, step.name, options.cache_dir, precision=precision)
    return state.embedded and state.indexed


# --------------------------------------------------------------------------------------------------------------
# Files of the job


def build_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / "build"


def status_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return build_dir(cache_dir) / "status.json"


def log_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return build_dir(cache_dir) / "build.log"


def _lock(cache_dir: str | os.PathLike | None) -> JobLock:
    return JobLock(build_dir(cache_dir) / "build.lock")


def runner(cache_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The running build of this cache (``{"pid", "since", "what", "catalog"}``), or ``None``."""
    return _lock(cache_dir).holder()


def build_log(cache_dir: str | os.PathLike | None = None, lines: int = 40) -> str:
    """The last ``lines`` lines of the build log."""
    return tail(log_path(cache_dir), lines)


# --------------------------------------------------------------------------------------------------------------
# The job


class _Runner:
    """The status of one running build: its steps as dicts, written to ``status.json`` (throttled)."""

    def __init__(self, catalog: Catalog, steps: list[BuildStep], options: BuildOptions, log: Callable[[str], None]):
        self.options = options
        self.path = status_path(options.cache_dir)
        self.log = log
        self.status: dict[str, Any] = {
            "catalog": str(catalog.root),
            "catalog_name": catalog.name,
            "fingerprint": catalog.fingerprint(),
            "pid": os.getpid(),
            "state": "running",
            "started": utc_now(),
            "finished": None,
            "message": "",
            "log": str(log_path(options.cache_dir)),
            "embedding": options.embedding_path(),
            "steps": [
                {"name": s.name, "kind": s.kind, "recipe": s.recipe, "needs": list(s.needs), "state": "queued"}
                for s in steps
            ],
        }
        self._written = 0.0

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.status["steps"] if e["name"] == name)

    def write(self, *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._written < STATUS_WRITE_EVERY_S:
            return
        self._written = now
        if not write_status(self.path, self.status):
            self.log(f"warning: could not write {self.path} (disk full?)")

    def set(self, name: str, state: str, **fields: Any) -> None:
        entry = self.entry(name)
        if state != "running":
            for key in ("percent", "eta_s", "phase"):
                entry.pop(key, None)
        entry.update(state=state, **fields)
        self.write()


class _StepProgress:
    """``RunContext.progress``-style factory for one step: updates the step's percent and ETA in the status, checks
    the cancel flag at every callback (a safe point: between batches and optimisation steps), and forwards to the
    caller's own bars (tqdm in the CLI)."""

    def __init__(
        self,
        run: _Runner,
        name: str,
        cancel: CancelFlag,
        outer: Callable[[str], tuple[Any, Callable[[], None]]] | None,
        *,
        total_epochs: int = 0,
    ) -> None:
        self.run, self.name, self.cancel, self.outer = run, name, cancel, outer
        self.total_epochs = total_epochs
        self.epochs_done = 0  #: epochs finished, this build's and (after a resume) the earlier builds'
        self.train_started: float | None = None
        self.train_base = 0.0  #: the fraction of the training done before this build started it (a resume)

    def __call__(self, desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
        outer_cb, outer_close = self.outer(desc) if self.outer is not None else (None, lambda: None)
        first = desc.split(" ")[0] if desc else "work"
        phase = "augment" if first.isdigit() else first  # "2 augmented views through ...", "embed x", "train x"
        started = time.monotonic()
        entry = self.run.entry(self.name)

        def update(done: int, total: int) -> None:
            self.cancel.check()
            if outer_cb is not None:
                outer_cb(done, total)
            part = done / total if total else 0.0
            if phase == "train" and self.total_epochs:
                if self.train_started is None:
                    self.train_started = started
                    self.train_base = min(1.0, self.epochs_done / self.total_epochs)
                fraction = min(1.0, (self.epochs_done + part) / self.total_epochs)
                if total and done >= total:
                    self.epochs_done += 1
                since, base = self.train_started, self.train_base
            else:
                fraction, since, base = part, started, 0.0
            # The ETA extrapolates the pace of this build only: after a resume, the epochs done by an earlier build
            # count in the percent, not in the time this one took.
            elapsed, gained = time.monotonic() - since, fraction - base
            eta = elapsed * (1 - fraction) / gained if gained > 0.01 else None
            entry.update(phase=phase, percent=round(100 * fraction, 1), eta_s=None if eta is None else round(eta, 1))
            self.run.write(force=False)

        return update, outer_close


def _train_step(
    step: BuildStep,
    catalog: Catalog,
    options: BuildOptions,
    progress: _StepProgress,
    log: Callable[[str], None],
) -> None:
    """Train ``step``'s recipe the way ``python -m lens train`` does (same config, split, run folder, RunContext),
    resuming from the run folder's checkpoint when an earlier build stopped half-way."""
    from lens.train import RunContext, get_split, train_recipe
    from lens.train.checks import check_training
    from lens.train.loop import read_live_history

    config = step_config(step, seed=options.seed)
    check_training(catalog, config, weights_dir=options.weights_dir, seed=options.seed)
    progress.total_epochs = int(config.epochs) + int(getattr(config, "head_epochs", 0) or 0)
    if hasattr(config, "member_epochs"):  # proxy-ensemble: the epochs of the members it trains first, + the join
        progress.total_epochs = int(config.member_epochs(options.models()))
    split, split_path = get_split(
        catalog, None, seed=options.seed, label_column=catalog.label_column, cache_dir=options.cache_dir
    )
    out = run_dir(step.name, options)
    # A resumed run starts from its last checkpoint: its percent starts from the epochs already done, not from 0.
    progress.epochs_done = len(read_live_history(out))
    ctx = RunContext(
        out_dir=out,
        models_dir=options.models(),
        cache_dir=Path(options.cache_dir) if options.cache_dir is not None else None,
        name=step.name,
        resume=True,
        split_path=split_path,
        progress=progress,
        log=log,
        publish=True,
    )
    log(f"{step.name}: training recipe {step.recipe} ({len(split.train)} train / {len(split.val)} val items)")
    result = train_recipe(catalog, config, ctx, split)
    write_json(out / "metrics.json", {"name": result.name, "seconds": result.seconds, **result.metrics})
    log(f"{step.name}: trained in {result.seconds:.0f}s, saved in {result.model_dir}")


def _embed_and_index(
    step: BuildStep, catalog: Catalog, options: BuildOptions, progress: _StepProgress, log: Callable[[str], None]
) -> tuple[EmbeddingSet, bool]:
    """Embed the catalog and index it; the embeddings, and whether the index still needs a full rebuild (an older
    catalog's index served with a delta past :data:`lens.delta.DELTA_MAX_FRACTION`: rebuilt once the step is ready).
    """
    from lens.delta import update_index
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    encoder = create_encoder(step.name, weights_dir=options.weights_dir)
    compute = None
    if options.ray_workers:
        from lens.distributed import ray_compute

        compute = ray_compute(
            workers=options.ray_workers,
            address=options.ray_address,
            encoder_options={"weights_dir": options.weights_dir, "cache_dir": options.cache_dir},
            models_dir=options.models(),
        )
    update, close = progress(f"embed {step.name}")
    try:
        embeddings = embed_catalog(
            catalog,
            encoder,
            cache_dir=options.cache_dir,
            batch_size=options.batch_size,
            progress=update,
            compute=compute,
        )
    finally:
        close()
    # Which path embedded this model, in the status (the Overview and `lens status` show it) and the log.
    path = "cache" if embeddings.from_cache else options.embedding_path()
    progress.run.entry(step.name)["embedded_by"] = path
    how = "from cache" if embeddings.from_cache else f"in {embeddings.seconds:.0f}s ({path})"
    log(f"{step.name}: {len(embeddings)} vectors {how}; {len(embeddings.failed)} unreadable images; building the index")
    progress.cancel.check()
    progress.run.entry(step.name).update(phase="index", percent=99.0, eta_s=None)
    progress.run.write()
    # An index of an older version of the catalog is updated (a delta + tombstones) rather than rebuilt.
    indexed = update_index(embeddings, cache_dir=options.cache_dir, rebuild="never")
    if indexed.action in ("updated", "delta"):
        log(f"{step.name}: {indexed.describe()}")
    return embeddings, indexed.rebuild_needed


def _rebuild_index(embeddings: EmbeddingSet, options: BuildOptions, log: Callable[[str], None]) -> None:
    """The full rebuild of an index served with a delta past the threshold. Best effort: the delta keeps serving."""
    from lens.delta import rebuild_index

    started = time.monotonic()
    try:
        rebuild_index(embeddings, cache_dir=options.cache_dir)
    except (LensError, OSError) as exc:
        log(f"{embeddings.encoder}: index not rebuilt; the delta keeps serving ({type(exc).__name__}: {exc})")
        return
    log(f"{embeddings.encoder}: index rebuilt in full in {format_duration(time.monotonic() - started)}")


def _precompute_map(
    embeddings: EmbeddingSet, catalog: Catalog, options: BuildOptions, log: Callable[[str], None]
) -> None:
    """The UMAP map the Projections page shows first (its default settings), computed now and cached on disk, so
    the page opens on it instead of waiting for UMAP (and numba's compilation). Best effort: a failure is logged."""
    from lens.projection import default_map_params, project_embeddings

    started = time.monotonic()
    try:
        project_embeddings(embeddings, default_map_params(len(catalog)), cache_dir=options.cache_dir)
    except Exception as exc:  # the map is a convenience: the page computes it on demand as before
        log(f"{embeddings.encoder}: map not precomputed ({type(exc).__name__}: {exc})")
        return
    log(f"{embeddings.encoder}: UMAP map ready in {format_duration(time.monotonic() - started)}")


def run_build(
    catalog: Catalog,
    steps: Sequence[BuildStep],
    options: BuildOptions | None = None,
    *,
    progress: Callable[[str], tuple[Any, Callable[[], None]]] | None = None,
    log: Callable[[str], None] | None = None,
    cancel: CancelFlag | None = None,
) -> dict[str, Any]:
    """Run the build: every step of ``steps`` not already in lens's caches, in order; the final status.

    One build at a time per cache; SIGTERM stops it at the next safe point (the running step goes back to
    ``queued``; a training step keeps its epoch checkpoint for the next build). A step that fails (bad catalog, a
    recipe's error) is marked ``failed`` with the message and the build goes on; a full disk stops the build.

    Args:
        catalog: the catalog to build for.
        steps: :func:`make_plan`'s steps.
        options: cache, weights and models folders, batch size, seed.
        progress: a bar factory ``progress(desc) -> (callback(done, total), close)`` (the CLI passes tqdm).
        log: one-line messages (default: appended to ``<cache>/build/build.log``).
        cancel: the cancel flag (default: SIGTERM / SIGINT handlers installed for the duration of the build).

    Raises:
        JobRunningError: another build of this cache is running (its pid and start time in the message).
    """
    from lens.encoders.trained import refresh_trained_models

    options = options or BuildOptions()
    log = log or JobLog(log_path(options.cache_dir))
    lock = _lock(options.cache_dir)
    lock.acquire("build", catalog=str(catalog.root))
    own_cancel = cancel is None
    cancel = cancel or CancelFlag().install()
    steps = list(steps)
    run = _Runner(catalog, steps, options, log)
    try:
        refresh_trained_models(options.models())
        todo = []
        for step in steps:
            reason = unavailable_reason(step, options.weights_dir)
            if reason:
                run.entry(step.name).update(state="skipped", reason=reason)
            elif _is_ready(step, catalog, options):
                run.entry(step.name).update(state="ready", reason="already built")
            else:
                todo.append(step)
        run.write()
        log(
            f"build of catalog '{catalog.name}' ({len(catalog)} items), pid {os.getpid()}: {len(todo)} step(s) to "
            f"run: {', '.join(s.name for s in todo) or 'none'}"
        )
        for step in todo:
            cancel.check()
            blocked = [
                n
                for n in step.needs
                if any(e["name"] == n and e["state"] in ("failed", "skipped") for e in run.status["steps"])
            ]
            if blocked:
                run.set(step.name, "skipped", reason=f"needs {', '.join(blocked)}, which did not build")
                continue
            run.set(step.name, "running", started=utc_now(), reason="", percent=0.0)
            log(f"{step.name}: started")
            started = time.monotonic()
            step_progress = _StepProgress(run, step.name, cancel, progress)
            try:
                if step.kind == "recipe":
                    from lens.encoders.trained import find_trained_models

                    if step.name not in find_trained_models(options.models()):
                        _train_step(step, catalog, options, step_progress, log)
                embeddings, rebuild = _embed_and_index(step, catalog, options, step_progress, log)
            except JobCancelled:
                run.set(step.name, "queued", reason="cancelled; the next build resumes it")
                raise
            except OSError as exc:
                why = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
                run.set(step.name, "failed", reason=why, finished=utc_now())
                log(f"{step.name}: failed: {why}")
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    run.status.update(state="failed", message=f"disk full: {why}; free some space and build again")
                    log("build stopped: the disk is full; finished models are kept, the next build goes on from here")
                    break
                continue
            except LensError as exc:
                run.set(step.name, "failed", reason=str(exc), finished=utc_now())
                log(f"{step.name}: failed: {exc}")
                continue
            except Exception as exc:  # a bug in one recipe must not stop the others; the traceback goes to the log
                run.set(step.name, "failed", reason=f"{type(exc).__name__}: {exc}", finished=utc_now())
                log(f"{step.name}: failed:\n{traceback.format_exc()}")
                continue
            seconds = time.monotonic() - started
            run.set(step.name, "ready", reason="", finished=utc_now(), seconds=round(seconds, 1))
            log(f"{step.name}: ready in {format_duration(seconds)}")
            cancel.check()
            if rebuild:  # after "ready": the delta serves meanwhile, and a killed rebuild leaves it serving
                _rebuild_index(embeddings, options, log)
                cancel.check()
            _precompute_map(embeddings, catalog, options, log)  # after "ready": the model is searchable already
        else:
            failed = [e["name"] for e in run.status["steps"] if e["state"] == "failed"]
            run.status.update(
                state="finished", message=f"{len(failed)} step(s) failed: {', '.join(failed)}" if failed else ""
            )
    except JobCancelled:
        run.status.update(state="cancelled", message="stopped on request; the next build resumes where this stopped")
        log("build cancelled; finished models are kept")
    finally:
        run.status["finished"] = utc_now()
        if run.status["state"] == "running":  # an unexpected exception is on its way up
            run.status.update(state="failed", message="the build stopped on an error; see the log")
        for entry in run.status["steps"]:
            if entry["state"] == "running":
                entry.update(state="queued")
                for key in ("percent", "eta_s", "phase"):
                    entry.pop(key, None)
        run.write()
        if own_cancel:
            cancel.restore()
        lock.release()
    return run.status


# --------------------------------------------------------------------------------------------------------------
# Starting, stopping, reading


def start_build(
    catalog: str | os.PathLike,
    *,
    label: str | None = None,
    options: BuildOptions | None = None,
    models: str | None = None,
    recipes: str | None = None,
    plan: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
) -> int:
    """Start ``python -m lens build`` for ``catalog`` as a detached background process; its pid, once it holds the
    build lock (a second-or-so: the runner's imports).

    Raises:
        JobRunningError: a build of this cache is already running (pid and start time in the message).
    """
    options = options or BuildOptions()
    holder = runner(options.cache_dir)
    if holder is not None:
        raise JobRunningError(
            f"a build is already running (pid {holder.get('pid', '?')}, since {holder.get('since', '?')}); "
            "its progress is on the Overview page and in `python -m lens status`.",
            holder,
        )
    args = ["build", "--catalog", str(catalog), "--cache-dir", str(options.cache()), "--quiet", "--log-to-stderr"]
    if label:
        args += ["--label", label]
    if options.weights_dir:
        args += ["--weights-dir", str(options.weights_dir)]
    if options.models_dir:
        args += ["--models-dir", str(options.models_dir)]
    if options.ray_workers:
        args += ["--ray", "--workers", str(options.ray_workers)]
        if options.ray_address:
            args += ["--address", options.ray_address]
    if models is not None:
        args += ["--models", models]
    if recipes is not None:
        args += ["--recipes", recipes]
    if plan is not None:
        args += ["--plan", str(plan)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # `-m lens` finds this lens, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = start_detached(
        python_module_argv("lens", *args, *extra_args), log_path=log_path(options.cache_dir), cwd=root, env=env
    )
    # Return once the runner holds the lock (a second start then reliably sees it), or say why it did not start.
    if not wait_for_holder(_lock(options.cache_dir), proc):
        finished = read_json(status_path(options.cache_dir)) or {}
        if proc.returncode == 0 and finished.get("pid") == proc.pid:
            return proc.pid  # a small build can run to its end before this loop sees it hold the lock
        holder = runner(options.cache_dir)
        if holder is not None:
            raise JobRunningError(
                f"a build is already running (pid {holder.get('pid', '?')}, since {holder.get('since', '?')}).", holder
            )
        last = [line for line in build_log(options.cache_dir, 5).splitlines() if line.strip()]
        raise LensError(f"the background build did not start: {last[-1] if last else 'see ' + str(log_path())}")
    return proc.pid


def stop_build(cache_dir: str | os.PathLike | None = None) -> int | None:
    """Ask the running build to stop (SIGTERM: it stops at its next safe point); its pid, or ``None`` if none runs."""
    holder = runner(cache_dir)
    pid = int(holder["pid"]) if holder and holder.get("pid") else None
    if pid is None or not terminate(pid):
        return None
    return pid


@dataclass(frozen=True)
class StepView:
    """What a user sees of one model: ``state`` is ready / building / queued / failed / skipped / missing."""

    name: str
    kind: str
    state: str
    reason: str = ""
    percent: float | None = None
    eta_s: float | None = None
    phase: str = ""
    embedded_by: str = ""  #: ``local``, ``cache`` or ``Ray Data, N workers``: the path that embedded it, when known


def plan_status(
    catalog: Catalog, steps: Sequence[BuildStep], options: BuildOptions | None = None
) -> tuple[list[StepView], dict[str, Any] | None]:
    """Each step's state, from lens's caches (ready?), the machine (weights?) and the running build's status file
    (percent, ETA, failures); plus the status file (``None`` when there is none for this catalog).

    A status file of another catalog is ignored; a status that says ``running`` without a live runner (killed) is
    reported as ``interrupted``.
    """
    options = options or BuildOptions()
    status = read_status(status_path(options.cache_dir))
    if status and status.get("fingerprint") != catalog.fingerprint():
        status = None
    alive = bool(status) and runner(options.cache_dir) is not None and pid_alive(status.get("pid"))  # type: ignore[union-attr]
    if status is not None and status.get("state") == "running" and not alive:
        status = {**status, "state": "interrupted", "message": "the build was stopped (killed?); build again to resume"}
    entries = {e["name"]: e for e in (status or {}).get("steps", [])}
    views = []
    for step in steps:
        entry = entries.get(step.name, {})
        reason = unavailable_reason(step, options.weights_dir)
        if reason:
            views.append(StepView(step.name, step.kind, "missing", reason))
        elif _is_ready(step, catalog, options):
            views.append(StepView(step.name, step.kind, "ready", embedded_by=str(entry.get("embedded_by", ""))))
        elif alive and entry.get("state") == "running":
            views.append(
                StepView(
                    step.name,
                    step.kind,
                    "building",
                    "",
                    entry.get("percent"),
                    entry.get("eta_s"),
                    entry.get("phase", ""),
                    str(entry.get("embedded_by", "") or (status or {}).get("embedding", "")),
                )
            )
        elif entry.get("state") in ("failed", "skipped"):
            views.append(StepView(step.name, step.kind, str(entry["state"]), str(entry.get("reason", ""))))
        else:
            views.append(StepView(step.name, step.kind, "queued", str(entry.get("reason", "")) if alive else ""))
    return views, status


def format_state(view: StepView) -> str:
    """``ready`` | ``building 40 % (ETA 1m20s)`` | ``queued`` | ``failed: why`` | ``weights missing``; a model
    embedded on Ray says so: ``ready (embedded on Ray Data, 2 workers)``, ``building 40 % (on Ray Data, ...)``."""
    ray = view.embedded_by.startswith("Ray")
    if view.state == "building":
        pct = f"{view.percent:.0f} %" if view.percent is not None else "…"
        eta = f"ETA {format_duration(view.eta_s)}" if view.eta_s is not None else "ETA ?"
        phase = f"{view.phase}, " if view.phase and view.phase not in ("embed", "train") else ""
        where = f"on {view.embedded_by}, " if ray and view.phase == "embed" else ""
        return f"building {pct} ({where}{phase}{eta})"
    if view.state == "ready" and ray:
        return f"ready (embedded on {view.embedded_by})"
    if view.state == "failed":
        return f"failed: {view.reason.splitlines()[0] if view.reason else '?'}"
    if view.state == "missing":
        return view.reason or "weights missing"
    if view.state == "skipped":
        return f"skipped: {view.reason}"
    return view.state


# --------------------------------------------------------------------------------------------------------------
# Training runs: one recipe with chosen settings, run as a build of one step (same lock, status, log, cancel, resume)

JOB_FILE = "job.json"  #: in a run folder: what was asked (recipe, settings, catalog), so a stopped run can be resumed


def run_dir(name: str, options: BuildOptions | None = None) -> Path:
    """``<cache>/runs/<name>``: a training run's checkpoints, live history, ``history.csv`` and ``metrics.json``."""
    return (options or BuildOptions()).cache() / "runs" / name


def training_step(
    recipe: str, settings: Mapping[str, Any] | None = None, *, name: str | None = None
) -> tuple[BuildStep, Any]:
    """The build step that trains ``recipe`` (any ``train`` spelling) with ``settings`` (overrides of its defaults;
    ``backbone`` picks the backbone) and saves it as ``name`` (default: the recipe's model name), and its config.

    Raises:
        LensError: unknown recipe, a setting the recipe does not have or a bad value, a bad model name.
    """
    from lens.encoders.trained import check_model_name

    settings = {k: v for k, v in dict(settings or {}).items() if v is not None}
    config = step_config(BuildStep(recipe, "recipe", recipe, settings))
    model = (name or "").strip() or config.model_name()
    check_model_name(model)
    needs = recipe_step(recipe, settings).needs
    return BuildStep(model, "recipe", recipe, settings, needs), config


def start_training(
    catalog: Catalog,
    recipe: str,
    settings: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    options: BuildOptions | None = None,
    label_column: str | None = None,
) -> tuple[int, BuildStep]:
    """Check, then start in the background a build of one step: train ``recipe`` with ``settings`` as ``name``, then
    embed and index the catalog with it (published the moment it is ready). The pid and the step.

    Checked first, nothing started when one fails (:func:`lens.train.checks.check_training`): the recipe and its
    settings, the backbone's weights, the label column's classes, the catalog's size; no build may be running; no
    trained model may already have the name (delete it first). An earlier stopped run of the same name is discarded
    (its checkpoints belong to other settings): :func:`resume_training` continues one instead.

    Raises:
        JobRunningError: a build (or another training run) of this cache is running.
        LensError: any failed check (the message says what to do).
    """
    from lens.encoders.trained import find_trained_models
    from lens.train.checks import check_training

    options = options or BuildOptions()
    step, config = training_step(recipe, settings, name=name)
    column = label_column or catalog.label_column
    check_training(catalog, config, label_column=column, weights_dir=options.weights_dir, seed=options.seed)
    _refuse_while_running(options, f"start training {step.name}")
    if step.name in find_trained_models(options.models()):
        raise LensError(
            f"a trained model named '{step.name}' exists already: delete it first (Train page, past runs), or give "
            "this run another name."
        )
    folder = run_dir(step.name, options)
    _remove_tree(folder)  # checkpoints of an earlier run with other settings must not be resumed into this one
    job = {
        "name": step.name,
        "recipe": step.recipe,
        "settings": dict(step.settings),
        "catalog": str(catalog.root),
        "catalog_name": catalog.name,
        "label_column": column,
        "created": utc_now(),
    }
    write_json(folder / JOB_FILE, job)
    return _start_job(job, step, options), step


def resume_training(name: str, options: BuildOptions | None = None) -> tuple[int, BuildStep]:
    """Start again the stopped run ``name`` from its last epoch checkpoint (its recipe, settings and catalog as
    first asked); the pid and the step.

    Raises:
        JobRunningError: a build of this cache is running.
        LensError: no stopped run of that name, or its model is already trained.
    """
    from lens.encoders.trained import find_trained_models

    options = options or BuildOptions()
    job = read_json(run_dir(name, options) / JOB_FILE)
    if not job:
        raise LensError(f"no stopped training run named '{name}' to resume; start it from the Train page.")
    _refuse_while_running(options, f"resume {name}")
    step, _ = training_step(str(job["recipe"]), job.get("settings") or {}, name=name)
    if name in find_trained_models(options.models()):
        raise LensError(f"'{name}' is trained already; nothing to resume.")
    return _start_job(job, step, options), step


def _start_job(job: Mapping[str, Any], step: BuildStep, options: BuildOptions) -> int:
    plan = {
        "encoders": [],
        "recipes": [
            {"name": step.name, "recipe": step.recipe, "settings": dict(step.settings), "needs": list(step.needs)}
        ],
    }
    plan_file = run_dir(step.name, options) / "plan.json"
    write_json(plan_file, plan)
    return start_build(
        str(job["catalog"]),
        label=str(job.get("label_column") or "") or None,
        options=options,
        models="none",
        plan=plan_file,
        extra_args=["--seed", str(options.seed)],
    )


def training_plan(name: str, options: BuildOptions | None = None) -> list[BuildStep]:
    """The one step of training run ``name`` (from its run folder), or ``[]`` when there is no such run."""
    plan_file = run_dir(name, options) / "plan.json"
    return make_plan(load_plan(plan_file), models="none") if plan_file.is_file() else []


def _refuse_while_running(options: BuildOptions, what: str) -> None:
    holder = runner(options.cache_dir)
    if holder is not None:
        raise JobRunningError(
            f"cannot {what}: a build is running (pid {holder.get('pid', '?')}, since {holder.get('since', '?')}); "
            "wait for it to finish, or stop it first.",
            holder,
        )


def _remove_tree(path: Path) -> None:
    """Remove the folder ``path`` atomically: one rename to a hidden name (from then on nothing sees it: lens skips
    hidden folders), then the files. A crash between the two leaves a hidden folder, never half a folder."""
    import shutil
    import uuid

    if not path.exists():
        return
    hidden = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.deleted")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def delete_model(name: str, options: BuildOptions | None = None) -> list[Path]:
    """Delete the trained model ``name``: its folder, its run folder, and its cached embeddings, Annoy indexes and
    maps of every catalog; each removed atomically. The folders removed.

    Holds the build lock while it deletes, so no build can be writing the model (or start to) meanwhile.

    Raises:
        JobRunningError: a build is running (it could be writing this model); stop it or wait.
        LensError: ``name`` is not a trained model (pretrained encoders are not deleted).
    """
    from lens.encoders.trained import check_model_name, find_trained_models, refresh_trained_models

    options = options or BuildOptions()
    try:
        check_model_name(name)  # a safe folder name, and not a pretrained encoder
    except LensError:
        raise LensError(f"'{name}' is not a trained model; only models trained on a catalog can be deleted.") from None
    lock = _lock(options.cache_dir)
    try:
        lock.acquire("deletion", wait=0.5)
    except JobRunningError as exc:
        raise JobRunningError(
            f"cannot delete '{name}' while a build is running (pid {exc.holder.get('pid', '?')}): it may be "
            "writing this model. Stop the build, or wait for it to finish.",
            exc.holder,
        ) from None
    try:
        trained = find_trained_models(options.models())
        run = run_dir(name, options)
        if name not in trained and not run.exists():
            known = ", ".join(trained) or "none"
            raise LensError(f"'{name}' is not a trained model of this cache (trained models: {known}).")
        cache = options.cache()
        folders = [trained.get(name), run] + [cache / kind / name for kind in ("embeddings", "indexes", "projections")]
        removed = []
        for folder in folders:
            if folder is not None and folder.exists():
                _remove_tree(folder)
                removed.append(folder)
        refresh_trained_models(options.models())
        return removed
    finally:
        lock.release()


@dataclass(frozen=True)
class RunInfo:
    """A training run as the Train page lists it.

    Attributes:
        name: the model's name.
        state: ``ready`` (trained and saved), ``running``, ``stopped`` (a checkpoint, no model: resumable) or
            ``failed`` (the last build said why).
        recipe: the recipe.
        settings: what was asked (overrides of the recipe's defaults), or the saved model's full training config.
        epochs_done: epochs in its history so far.
        metrics: held-out figures (``precision@5``...) when the run finished.
        saved: when the model was saved (``""`` when it was not).
        reason: why it failed.
    """

    name: str
    state: str
    recipe: str
    settings: dict[str, Any]
    epochs_done: int
    metrics: dict[str, Any]
    saved: str = ""
    reason: str = ""


def read_history(name: str, options: BuildOptions | None = None) -> list[dict[str, float]]:
    """The per-epoch history of run ``name`` (``epoch``, ``loss``, ``seconds``, ``val_p@5``..., ``stage`` for two-stage
    recipes): ``history.csv`` of a finished run, else the epochs done so far (updated after every epoch)."""
    import csv

    from lens.train.loop import read_live_history

    folder = run_dir(name, options)
    final = folder / "history.csv"
    if final.is_file():
        try:
            with open(final, encoding="utf-8", newline="") as fh:
                return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
        except (OSError, ValueError):
            pass
    return read_live_history(folder)


def list_runs(options: BuildOptions | None = None) -> list[RunInfo]:
    """Every trained model and every unfinished run of this cache, by name."""
    from lens.encoders.trained import find_trained_models, read_model_config

    options = options or BuildOptions()
    trained = find_trained_models(options.models())
    runs_root = options.cache() / "runs"
    names = set(trained)
    if runs_root.is_dir():
        names |= {p.name for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    status = read_status(status_path(options.cache_dir)) or {}
    alive = runner(options.cache_dir) is not None and pid_alive(status.get("pid"))
    entries = {e.get("name"): e for e in status.get("steps", [])}
    out = []
    for name in sorted(names):
        folder = run_dir(name, options)
        job = read_json(folder / JOB_FILE) or {}
        metrics = read_json(folder / "metrics.json") or {}
        history = read_history(name, options)
        entry = entries.get(name, {})
        if name in trained:
            try:
                config = read_model_config(trained[name])
            except LensError:
                config = {}
            train = dict(config.get("train") or {})
            failed = entry.get("state") == "failed"  # saved, but the last build could not embed or index with it
            out.append(
                RunInfo(
                    name,
                    "failed" if failed else "ready",
                    str(config.get("recipe") or train.get("recipe") or job.get("recipe", "")),
                    train or dict(job.get("settings") or {}),
                    len(history),
                    {k: v for k, v in metrics.items() if k not in ("name",)},
                    str(config.get("saved", "")),
                    str(entry.get("reason", "")) if failed else "",
                )
            )
            continue
        if not job and not history:
            continue  # a folder of something else (or a run that never got to its first epoch and was not asked here)
        if alive and entry.get("state") == "running":
            state, reason = "running", ""
        elif entry.get("state") == "failed":
            state, reason = "failed", str(entry.get("reason", ""))
        else:
            state, reason = "stopped", ""
        out.append(
            RunInfo(
                name, state, str(job.get("recipe", "")), dict(job.get("settings") or {}), len(history), {}, "", reason
            )
        )
    return out
