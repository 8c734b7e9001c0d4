"""Search (merchandisers): query by a catalog product, an uploaded photo, a crop of either, text, or image + text;
filter by metadata; results as cards with a coloured similarity; CSV export."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import components, config, history, query, resources
from lens.errors import LensError

components.run_through_app()

RESULTS_KEY = "search_results"  # session key of the last results table (what the CSV export holds)

st.title("Search")
st.caption("Find the catalog products most similar to a photo, a product, a crop of either, or a description.")
st.session_state.pop(RESULTS_KEY, None)  # set again only when this run renders results
history_slot = st.container()
ctx = components.require_context()
catalog = ctx.catalog

top = st.columns([2, 1, 3])
with top[0]:
    model_row = components.model_select(ctx, "Model", key="search_model")
with top[1]:
    k = st.slider("Results (k)", 1, 50, 10, key="search_k")
text_models = [r["name"] for r in resources.encoders() if r["text"] and r["available"]]


def to_text_model() -> None:
    """Radio callback: a text query switches an image-only model to the best text model (config.BEST_TEXT_FIRST)."""
    if st.session_state.get("search_mode") in (query.TEXT, query.IMAGE_TEXT):
        # only models the select box offers (on a large catalog: the ready ones)
        offered = components.cached_models(ctx) if components.large_catalog(ctx) else text_models
        current = str(st.session_state.get("search_model", ""))
        st.session_state["search_model"] = config.pick_text_model(current, [m for m in text_models if m in offered])


with top[2]:
    mode = st.radio("Query by", query.MODES, horizontal=True, key="search_mode", on_change=to_text_model)

model = model_row["name"]


def pick_product() -> str | None:
    """A catalog product chosen by searching its name or id."""
    needle = st.text_input("Find a product (name or id)", key="search_product_query", placeholder="e.g. shirt or 15970")
    matches = resources.find_products(ctx.path, ctx.load_label, ctx.fingerprint, needle, ctx.title_column)
    if not matches:
        st.warning(f"No product's id or name contains '{needle}'; try a shorter word.")
        return None
    return st.selectbox(
        f"Product ({len(matches)}{'+' if len(matches) == 200 else ''} matches)",
        matches,
        key="search_product",
        format_func=lambda i: f"{i} — {ctx.title(i)}"[:90],
    )


def uploaded_image() -> tuple[object, bytes] | None:
    """The uploaded query image (decoded, checked) and its bytes; an error or a hint otherwise."""
    # MIME types and extensions: the browser offers only these, and Streamlit leaves the server-side check to
    # query.read_upload, which answers a wrong file with a message instead of an exception.
    upload = st.file_uploader(
        f"Product photo (JPEG, PNG or WebP, up to {config.MAX_UPLOAD_MB} MB)",
        type=list(config.UPLOAD_ACCEPT),
        max_upload_size=config.MAX_UPLOAD_MB,
        key="search_upload",
    )
    if upload is None:
        st.info("Upload a product photo to search with it.")
        return None
    data = upload.getvalue()
    try:
        return query.read_upload(upload.name, data), data
    except LensError as exc:
        st.error(str(exc))
        return None


def url_image() -> tuple[object, bytes, str] | None:
    """The query image fetched from an address (public addresses only), its bytes and final URL; a hint otherwise."""
    url = st.text_input(
        "Image address (URL)",
        key="search_url",
        placeholder="https://…/product.jpg",
        help="The address of a JPEG, PNG or WebP photo (right-click an image, 'Copy image address'). Only public "
        f"addresses are fetched, up to {config.MAX_UPLOAD_MB} MB.",
    )
    if not url.strip():
        st.info("Paste the address of a product photo to search with it.")
        return None
    try:
        return query.read_url_image(url.strip(), resources.fetch_url)
    except LensError as exc:
        st.error(str(exc))
        return None


def crop_controls() -> tuple[tuple[float, float], tuple[float, float]]:
    with st.expander("Crop the query image"):
        x = st.slider("Horizontal range (%)", 0, 100, (0, 100), key="search_crop_x")
        y = st.slider("Vertical range (%)", 0, 100, (0, 100), key="search_crop_y")
    return x, y


def text_input(image_too: bool) -> str | None:
    """The text of a text query; a warning when it is empty, an error when the model cannot embed text."""
    text = st.text_input(
        "Describe the product",
        key="search_text",
        placeholder="e.g. red floral summer dress",
        max_chars=query.MAX_TEXT_CHARS,
        help="Text queries need a text-capable model (marked 'image + text' in the model list).",
    )
    if not text.strip():
        st.warning(
            "Type a description to search by text"
            + (", or switch 'Query by' to an image query." if image_too else " (e.g. 'blue denim jacket').")
        )
        return None
    if not model_row["text"]:
        st.error(query.text_unsupported(model, text_models))
        return None
    if len(text) >= query.MAX_TEXT_CHARS:
        st.warning(
            f"Descriptions are limited to {query.MAX_TEXT_CHARS:,} characters, so the text was cut there; a few words "
            "that describe the product work best (e.g. 'red floral summer dress')."
        )
    return text.strip()


def reopen(number: int) -> None:
    """Button callback: restore query ``number``'s widgets before the page's widgets are drawn again."""
    try:
        history.reopen(st.session_state, number)
    except (KeyError, ValueError) as exc:
        st.session_state["search_history_error"] = f"Query #{number} cannot be re-opened: {exc}."


def show_history() -> None:
    """The session's queries, drawn into the slot under the title; called before every stop of the page."""
    with history_slot.expander(f"Query history ({len(history.entries(st.session_state))} this session)"):
        if message := st.session_state.pop("search_history_error", None):
            st.warning(message)
        st.dataframe(history.table(st.session_state), hide_index=True, key="search_history_table")
        numbers = [e.number for e in reversed(history.entries(st.session_state)) if e.reopenable]
        cols = st.columns([2, 1, 2], vertical_alignment="bottom")
        chosen = cols[0].selectbox(
            "Query",
            numbers,
            key="search_history_pick",
            format_func=lambda n: f"#{n}",
            help="Uploaded photos cannot be re-opened (upload them again); their results stay in the export.",
        )
        cols[1].button(
            "Re-open",
            key="search_history_reopen",
            on_click=reopen,
            args=(chosen,),
            disabled=chosen is None,
            icon=":material/history:",
        )
        with cols[2]:
            components.download_csv(
                history.all_results(st.session_state),
                "All results of the session (CSV)",
                "lens-search-history.csv",
                key="search_history_csv",
            )


def finish() -> None:
    """Draw the history, then stop the page (what every early exit does)."""
    show_history()
    st.stop()


# ------------------------------------------------------------------------------------------------ query inputs
left, right = st.columns([1, 2], gap="large")
found: query.Query | None = None
exclude: list[str] = []
with left:
    if not components.require_available(model_row):
        finish()
    embeddings = components.ensure_embeddings(ctx, model, key="search")
    if embeddings is None:
        finish()
    source = mode if mode in query.IMAGE_SOURCES else None
    if mode != query.PRODUCT:  # a photo or a text will need the encoder: load it while the user picks one
        resources.warm_encoder(model)
    if mode == query.IMAGE_TEXT:
        source = st.radio("Image from", query.IMAGE_SOURCES, horizontal=True, key="search_image_source")
    upload = None
    data = b""
    image_key = ""
    product_id = None
    url = None
    if source == query.PRODUCT:
        product_id = pick_product()
        if product_id is not None:
            image_key = resources.digest(ctx.fingerprint, product_id)
    elif source == query.UPLOAD:
        loaded = uploaded_image()
        if loaded is not None:
            upload, data = loaded
            image_key = resources.digest(data)
    elif source == query.URL:
        fetched = url_image()
        if fetched is not None:
            upload, data, url = fetched
            image_key = resources.digest(data)
    crop_x, crop_y = crop_controls() if source else (query.FULL_RANGE, query.FULL_RANGE)
    text = text_input(image_too=mode == query.IMAGE_TEXT) if mode in (query.TEXT, query.IMAGE_TEXT) else None
    weight = 0.5
    if mode == query.IMAGE_TEXT:
        weight = st.slider("Weight of the text", 0.0, 1.0, 0.5, 0.05, key="search_text_weight")
    if product_id is not None and st.checkbox(
        "Leave the product itself out of the results", value=True, key="search_exclude_self"
    ):
        exclude = [product_id]
    parts = query.QueryParts(
        mode=mode,
        product_id=product_id,
        upload=upload,
        upload_data=data if upload is not None else None,
        url=url,
        image_key=resources.digest(image_key, crop_x, crop_y),
        crop_x=crop_x,
        crop_y=crop_y,
        text=text,
        weight=weight,
    )
    started = time.perf_counter()
    try:
        found = query.build_query(parts, components.query_encoders(ctx, model, embeddings))
    except LensError as exc:
        st.error(str(exc))
    if found is not None and found.image is not None:
        caption = "Query" if query.is_full_crop(crop_x, crop_y) else "Query (cropped)"
        st.image(resources.image_bytes(found.image), caption=caption, width="stretch")
    elif product_id is not None:
        st.image(ctx.thumb(product_id, 2 * config.THUMBNAIL_PX), caption=ctx.title(product_id), width="stretch")

# ----------------------------------------------------------------------------------------------------- filters
with right:
    filter_columns = query.filter_columns(ctx.categorical)
    filters: dict[str, list[str]] = {}

    def filter_widget(column: str) -> None:
        values = resources.column_values(ctx.path, ctx.load_label, ctx.fingerprint, column)
        filters[column] = st.multiselect(column, values, key=f"search_filter_{column}", placeholder="any")

    st.markdown("**Filters**")
    main_filters, more_filters = filter_columns[:3], filter_columns[3:]
    for column, slot in zip(main_filters, st.columns(max(1, len(main_filters)))):
        with slot:
            filter_widget(column)
    if more_filters:
        with st.expander("More filters"):
            for column in more_filters:
                filter_widget(column)
    rerank = st.toggle(
        f"Re-rank with query expansion (the query + its {query.EXPAND_NEIGHBOURS} nearest products)",
        key="search_rerank",
        help="alpha query expansion: the query vector is averaged with its nearest catalog products, weighted by "
        "similarity cubed, and searched again. On the held-out queries of the sample catalog it moved P@5 by "
        "+0.003 and MAP@R by +0.01 for the proxy model (docs/training.md); the Metrics page measures it per model.",
    )
    active = query.active_filters(filters)
    allowed = resources.allowed_ids(ctx.path, ctx.load_label, ctx.fingerprint, active) if active else None
    if allowed is not None:
        st.caption(f"{len(allowed):,} of {len(catalog):,} products pass the filters.")

# ----------------------------------------------------------------------------------------------------- results
st.divider()
if found is None or found.vector is None:
    finish()
if allowed is not None and not (allowed - set(exclude)):
    st.warning("No product passes these filters; remove a filter value to see results.")
    finish()
try:
    results = resources.search(
        *ctx.emb(model),
        found.vector,
        k,
        exclude=exclude,
        allowed=allowed,
        expand=query.EXPAND_NEIGHBOURS if rerank else 0,
    )
except LensError as exc:
    st.error(str(exc))
    finish()
results = query.annotate_results(results, model=model, label=found.label)
predicted = components.predicted_category(ctx, model, found.vector)
if predicted is not None:
    results[f"query_predicted_{ctx.label_column}"] = predicted[0].label
    results["query_predicted_confidence"] = round(predicted[0].confidence, 4)
st.session_state[RESULTS_KEY] = results

if predicted is not None:
    st.markdown(components.prediction_line(ctx.label_column, *predicted, model))
header = st.columns([3, 1, 1], vertical_alignment="bottom")
timing = header[0].empty()
as_table = header[1].toggle("Show as table", key="search_as_table")
with header[2]:
    components.download_csv(results, "Download CSV", f"lens-search-{model}.csv", key="search_csv")
meta_columns = [c for c in (ctx.label_column, "gender", "baseColour") if c in catalog.columns]
if results.empty:
    st.info("No result: the index returned nothing for this query.")
elif as_table:
    st.dataframe(results.drop(columns=["image"], errors="ignore"), hide_index=True)
else:
    components.result_cards(ctx, results, meta_columns=meta_columns)
elapsed = time.perf_counter() - started
timing.markdown(f"**{len(results)} results** for {found.label} · {model} · {elapsed * 1000:.0f} ms")
st.session_state["search_elapsed_s"] = elapsed

# ----------------------------------------------------------------------------------------------------- why similar
if source is not None and mode != query.IMAGE_TEXT and not results.empty:
    with st.expander("Why similar? Where the similarity of the query and a result comes from"):
        query_image = found.image
        if query_image is None and product_id is not None:  # an uncropped product: its stored vector served
            query_image = resources.load_image(str(catalog.image_path(catalog.index_of(product_id))))
        components.why_similar(ctx, model, query_image, parts.image_key, results)

# ------------------------------------------------------------------------------------------------------- history
REOPEN_KEYS = ["search_model", "search_k", "search_mode", "search_crop_x", "search_crop_y"]
if mode == query.IMAGE_TEXT:
    REOPEN_KEYS.append("search_image_source")
if source == query.PRODUCT:
    REOPEN_KEYS += ["search_product", "search_exclude_self"]
elif source == query.URL:
    REOPEN_KEYS.append("search_url")
if mode in (query.TEXT, query.IMAGE_TEXT):
    REOPEN_KEYS += ["search_text", "search_text_weight"]
widgets = {key: st.session_state[key] for key in REOPEN_KEYS if key in st.session_state}
if source == query.PRODUCT:
    widgets["search_product_query"] = product_id  # the product picker lists the product again
widgets.update({f"search_filter_{column}": list(filters.get(column, [])) for column in filter_columns})
history.record(
    st.session_state,
    model=model,
    k=k,
    label=found.label,
    filters=filters,
    widgets={} if source == query.UPLOAD else widgets,  # an uploaded photo cannot be re-made from widgets
    results=results,
)
show_history()
