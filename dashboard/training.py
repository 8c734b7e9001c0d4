"""The Train page's widgets: the recipe form (defaults from the recipe's config), the watch of a running or stopped
run (state, ETA, live curves, stop, resume, log) and the past runs (config, history, held-out figures, delete).

Everything runs through lens: a run is a background build of one step (:func:`lens.build.start_training`), checked
before it starts (:func:`lens.train.checks.check_training`); this module only lays it out.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, config, resources
from dashboard.components import Context, escape_md, ray_toggle
from lens.build import JobRunningError, RunInfo, format_state
from lens.errors import LensError
from lens.jobs import format_duration

#: The settings shown at once (when the recipe has them); the others are in "More settings".
MAIN_SETTINGS = ("variant", "epochs", "head_epochs", "lr", "batch_size", "views", "augment_views", "trainable_blocks")
WATCH_KEY = "train_watch"  #: session key: the run the page follows
MESSAGE_KEY = "train_message"


def _number(setting: Any, key: str) -> Any:
    """A number input for an int or float setting, starting at its default (``None``: empty, e.g. steps per epoch)."""
    label = setting.name.replace("_", " ")
    help_text = f"{setting.help} (default: {setting.default}; `{setting.flag}` in `python -m lens train`)"
    if setting.kind == "int":
        return st.number_input(
            label,
            min_value=setting.minimum,
            value=setting.default,
            step=1,
            key=key,
            help=help_text,
            placeholder="the recipe's choice" if setting.optional else None,
        )
    default = float(setting.default)
    step = 10 ** math.floor(math.log10(abs(default))) / 10 if default else 0.01
    return st.number_input(label, value=default, step=step, format="%g", key=key, help=help_text)


def _setting_widget(setting: Any, key: str) -> Any:
    if setting.kind == "str":
        label = setting.name.replace("_", " ")
        help_text = f"{setting.help} (default: {setting.default})"
        if setting.choices:
            options = list(setting.choices)
            return st.selectbox(label, options, index=options.index(setting.default), key=key, help=help_text)
        return st.text_input(label, value=setting.default, key=key, help=help_text)
    return _number(setting, key)


def recipe_form(ctx: Context) -> None:
    """Pick a recipe, its backbone and settings (each starting at the recipe's default), a name; start the run."""
    recipes = resources.recipe_names()
    recipe = st.selectbox(
        "Recipe",
        recipes,
        index=recipes.index("triplet") if "triplet" in recipes else 0,
        key="train_recipe",
        format_func=lambda r: f"{r} — {resources.recipe_summary(r)}",
    )
    settings: dict[str, Any] = {}
    default_backbone = resources.recipe_backbone(recipe)
    if default_backbone is not None:
        rows = {r["name"]: r for r in resources.encoders()}
        names = resources.backbone_names(config.show_test_encoders())
        names = [n for n in names if n in rows]
        if default_backbone not in names:
            names.insert(0, default_backbone)
        backbone = st.selectbox(
            "Backbone",
            names,
            index=names.index(default_backbone),
            key=f"train_backbone_{recipe}",
            format_func=lambda n: n if rows.get(n, {}).get("available", False) else f"{n} (weights missing)",
            help=f"the pretrained image encoder the recipe starts from (default: {default_backbone})",
        )
        if backbone != default_backbone:
            settings["backbone"] = backbone
    all_settings = resources.recipe_settings(recipe)
    main = [s for name in MAIN_SETTINGS for s in all_settings if s.name == name]
    more = [s for s in all_settings if s not in main]
    values: dict[str, Any] = {}
    cols = st.columns(4)
    for i, setting in enumerate(main):
        with cols[i % 4]:
            values[setting.name] = _setting_widget(setting, f"train_{recipe}_{setting.name}")
    if more:
        with st.expander(f"More settings ({len(more)})"):
            cols = st.columns(4)
            for i, setting in enumerate(more):
                with cols[i % 4]:
                    values[setting.name] = _setting_widget(setting, f"train_{recipe}_{setting.name}")
    by_name = {s.name: s for s in all_settings}
    for name, value in values.items():  # only what differs from the defaults goes into the run (and its plan)
        default = by_name[name].default
        if value != default and not (value is None and default is None):
            settings[name] = int(value) if by_name[name].kind == "int" and value is not None else value
    try:
        default_name = resources.training_name(recipe, settings)
    except LensError as exc:
        st.error(str(exc))
        return
    name = st.text_input(
        "Save as",
        placeholder=default_name,
        key="train_name",
        help="the model's name in every model picker (empty: the recipe's default name)",
    ).strip()
    label = ctx.label_column if ctx.label_column in ctx.catalog.columns else ctx.load_label
    st.caption(
        escape_md(
            f"Trains on catalog '{ctx.catalog.name}' ({len(ctx.catalog):,} items), classes from '{label}'; "
            "then embeds and indexes the catalog with the new model. Runs in the background: closing the tab does "
            "not stop it."
        )
    )
    on_ray = ray_toggle("train_ray")
    if st.button("Start training", key="train_start", type="primary", icon=":material/model_training:"):
        try:
            pid, model = resources.start_training(
                ctx.path, ctx.load_label, ctx.cache_dir, label, recipe, settings, name, on_ray=on_ray
            )
        except JobRunningError as exc:
            st.warning(str(exc))
        except LensError as exc:
            st.error(str(exc))
        else:
            st.session_state[WATCH_KEY] = model
            st.session_state[MESSAGE_KEY] = f"Training of '{model}' started in the background (pid {pid})."
            st.rerun()


def _watched(runs: list[RunInfo]) -> RunInfo | None:
    """The run to follow: the one started here, else a running one, else the last stopped one."""
    by_name = {r.name: r for r in runs}
    chosen = by_name.get(st.session_state.get(WATCH_KEY, ""))
    if chosen is not None:
        return chosen
    for state in ("running", "stopped", "failed"):
        found = [r for r in runs if r.state == state]
        if found:
            return found[-1]
    return None


def run_watch(ctx: Context) -> None:
    """The followed run: state with percent and ETA, stop / resume, its loss and validation P@5 curves, the log;
    refreshes every few seconds while a build runs (``st.fragment(run_every=...)``)."""
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        st.success(message)
    running = resources.build_views(ctx.path, ctx.load_label, ctx.fingerprint, ctx.cache_dir)["runner"] is not None

    @st.fragment(run_every=config.BUILD_REFRESH_S if running else config.BUILD_IDLE_REFRESH_S)
    def watch() -> None:
        info = resources.build_views(ctx.path, ctx.load_label, ctx.fingerprint, ctx.cache_dir)
        if running != (info["runner"] is not None):
            st.rerun()  # a run started or ended: redraw the page (buttons, past runs, pickers)
        runs = resources.train_runs(ctx.cache_dir, resources.models_stamp(ctx.cache_dir))
        run = _watched(runs)
        if run is None:
            st.info("No training run yet: pick a recipe above and start one.")
            return
        view = resources.training_view(ctx.path, ctx.load_label, ctx.cache_dir, run.name)
        state = format_state(view) if view is not None and run.state != "stopped" else run.state
        if run.state == "running" and view is not None and view.state == "building":
            state = format_state(view)
        cols = st.columns([3, 1, 1], vertical_alignment="bottom")
        cols[0].markdown(f"**{escape_md(run.name)}** ({escape_md(run.recipe)}): {escape_md(state)}")
        if view is not None and view.state == "building":
            cols[0].progress(min(1.0, (view.percent or 0.0) / 100), text=f"ETA {format_duration(view.eta_s)}")
        if cols[1].button("Stop", key="train_stop", disabled=info["runner"] is None, icon=":material/stop:"):
            pid = resources.stop_build(ctx.cache_dir)
            st.session_state[MESSAGE_KEY] = (
                f"Asked the run (pid {pid}) to stop after its current batch; resume it from here."
                if pid
                else "No run is going on."
            )
            st.rerun()
        resumable = run.state in ("stopped", "failed") and info["runner"] is None
        if cols[2].button("Resume", key="train_resume", disabled=not resumable, icon=":material/play_arrow:"):
            _resume(ctx, run.name)
        if run.reason:
            st.error(escape_md(run.reason.splitlines()[0]))
        history = resources.run_history(ctx.cache_dir, run.name)
        if len(history):
            st.plotly_chart(
                charts.training_curves(
                    history,
                    title=f"{run.name}: {len(history)} epoch(s)" + ("" if run.state == "ready" else " so far"),
                ),
                key="train_curves",
            )
        else:
            st.caption("The curves appear after the first epoch.")
        with st.expander("Log"):
            st.code(info["log"] or "(nothing logged yet)", language=None)

    watch()


def _resume(ctx: Context, name: str) -> None:
    try:
        pid = resources.resume_training(ctx.cache_dir, name)
    except JobRunningError as exc:
        st.warning(str(exc))
    except LensError as exc:
        st.error(str(exc))
    else:
        st.session_state[WATCH_KEY] = name
        st.session_state[MESSAGE_KEY] = f"Resumed '{name}' from its last epoch in the background (pid {pid})."
        st.rerun()


def _figure(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return f"{float(value):.3f}" if isinstance(value, (int, float)) else ""


def past_runs(ctx: Context) -> None:
    """Every trained model and unfinished run: a table, then one run's config, curves, held-out figures, delete."""
    runs = resources.train_runs(ctx.cache_dir, resources.models_stamp(ctx.cache_dir))
    if not runs:
        st.caption("No trained model in this cache yet.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "model": [r.name for r in runs],
                "state": [r.state for r in runs],
                "recipe": [r.recipe for r in runs],
                "epochs": [r.epochs_done for r in runs],
                "held-out P@5": [_figure(r.metrics, "precision@5") for r in runs],
                "held-out mAP@R": [_figure(r.metrics, "map@r") for r in runs],
                "train s": [_figure(r.metrics, "seconds").split(".")[0] for r in runs],
                "saved": [r.saved[:19].replace("T", " ") for r in runs],
            }
        ),
        hide_index=True,
        key="train_runs_table",
    )
    names = [r.name for r in runs]
    name = st.selectbox("Run", names, key="train_past", help="its settings, curves and held-out figures")
    run = next(r for r in runs if r.name == name)
    left, right = st.columns([1, 2], gap="large")
    with left:
        st.markdown("**Settings**")
        st.json(run.settings, expanded=True)
        if run.metrics:
            st.markdown("**Held-out figures** (queries no model saw in training)")
            shown = {
                k: round(float(v), 4)
                for k, v in run.metrics.items()
                if isinstance(v, (int, float)) and not k.startswith("n_") and k != "publish_max_abs_diff"
            }
            st.dataframe(
                pd.DataFrame({"metric": list(shown), "value": list(shown.values())}),
                hide_index=True,
                key="train_past_metrics",
            )
    with right:
        history = resources.run_history(ctx.cache_dir, name)
        if len(history):
            st.plotly_chart(charts.training_curves(history, title=name), key="train_past_curves")
    _delete(ctx, name)


def _delete(ctx: Context, name: str) -> None:
    """Delete with a confirmation (two clicks); refused while a build runs (lens says so)."""
    confirming = st.session_state.get("train_delete_confirm") == name
    if not confirming:
        if st.button(f"Delete {name}", key="train_delete", icon=":material/delete:"):
            st.session_state["train_delete_confirm"] = name
            st.rerun()
        return
    st.warning(
        escape_md(
            f"Delete '{name}': its weights, run folder (checkpoints, history) and cached embeddings and index? "
            "This cannot be undone."
        )
    )
    cols = st.columns([1, 1, 4])
    if cols[0].button("Yes, delete", key="train_delete_yes", type="primary"):
        st.session_state.pop("train_delete_confirm", None)
        try:
            resources.delete_model(ctx.cache_dir, name)
        except JobRunningError as exc:
            st.warning(str(exc))
            return
        except LensError as exc:
            st.error(str(exc))
            return
        if st.session_state.get(WATCH_KEY) == name:
            st.session_state.pop(WATCH_KEY, None)
        st.session_state[MESSAGE_KEY] = f"Deleted '{name}'."
        st.rerun()
    if cols[1].button("Cancel", key="train_delete_no"):
        st.session_state.pop("train_delete_confirm", None)
        st.rerun()
