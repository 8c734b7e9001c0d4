// The Streamlit side of a v1 component without streamlit-component-lib (no npm): the same postMessage protocol.
// Render arguments (from dashboard/hovermap.py): spec (a plotly figure; customdata = [id, thumbnail file]), spec_id
// (a digest of spec: redrawn only when it changes), thumbs (URL prefix of the thumbnail files), height (pixels).
// Value sent back: {selection: {points: [{customdata: [id]}, ...]}, seq} on a box/lasso selection or a click.
"use strict";

const mapDiv = document.getElementById("map");
const photo = document.getElementById("photo");
const photoImg = photo.querySelector("img");
const photoText = photo.querySelector("div");
const problem = document.getElementById("problem");
let thumbs = "";
let lastSpec = null;
let bound = false;
let seq = 0;
let failedSrc = null;

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}

function setFrameHeight(height) {
  send("streamlit:setFrameHeight", { height: height });
}

function sendSelection(ids) {
  seq += 1;
  send("streamlit:setComponentValue", {
    value: { selection: { points: ids.map((id) => ({ customdata: [id] })) }, seq: Date.now() + ":" + seq },
    dataType: "json",
  });
}

function showProblem(text) {
  problem.textContent = text;
  problem.style.display = "block";
  setFrameHeight(problem.offsetHeight + 8);
}

function idsOf(points) {
  const ids = [];
  for (const point of points || []) {
    const custom = point.customdata;
    const id = Array.isArray(custom) ? custom[0] : custom;
    if (id !== undefined && id !== null && !ids.includes(String(id))) ids.push(String(id));
  }
  return ids;
}

function placePhoto(event) {
  // Up and to the left of the pointer (plotly's own label goes to the right), kept inside the frame.
  const margin = 12;
  const w = photo.offsetWidth;
  const h = photo.offsetHeight;
  let x = event.clientX - w - margin;
  let y = event.clientY - h - margin;
  if (x < 0) x = event.clientX + margin;
  if (y < 0) y = event.clientY + margin;
  x = Math.max(0, Math.min(x, window.innerWidth - w));
  y = Math.max(0, Math.min(y, window.innerHeight - h));
  photo.style.left = x + "px";
  photo.style.top = y + "px";
}

function onHover(data) {
  const point = data && data.points && data.points[0];
  const custom = point && point.customdata;
  if (!Array.isArray(custom) || !custom[1]) return;
  const src = thumbs + custom[1];
  if (src === failedSrc) {
    // Not written yet when last asked (the page writes the thumbnails after drawing the maps): ask again.
    failedSrc = null;
    photoImg.removeAttribute("src");
  }
  if (photoImg.getAttribute("src") !== src) {
    photoImg.style.display = "block";
    photoImg.setAttribute("src", src);
  }
  photoImg.setAttribute("alt", String(custom[0]));
  photoText.textContent = point.hovertext || String(custom[0]);
  photo.style.display = "block";
  if (data.event) placePhoto(data.event);
}

photoImg.addEventListener("error", () => {
  // No thumbnail (a photo that cannot be read, or not written yet): the title alone.
  failedSrc = photoImg.getAttribute("src");
  photoImg.style.display = "none";
});

function onUnhover() {
  photo.style.display = "none";
}

function bindEvents() {
  if (bound) return;
  bound = true;
  mapDiv.on("plotly_hover", onHover);
  mapDiv.on("plotly_unhover", onUnhover);
  mapDiv.on("plotly_selected", (data) => {
    // plotly_selected also fires with no data when a drag selects nothing: ignored, as a click on empty space is.
    const ids = idsOf(data && data.points);
    if (ids.length) sendSelection(ids);
  });
  mapDiv.on("plotly_click", (data) => {
    const ids = idsOf(data && data.points).slice(0, 1);
    if (ids.length) sendSelection(ids);
  });
  window.addEventListener("resize", () => Plotly.Plots.resize(mapDiv));
}

function render(args) {
  if (typeof Plotly === "undefined") {
    showProblem("plotly.js could not be loaded from the Streamlit server; switch off 'Photo on hover' above.");
    return;
  }
  thumbs = args.thumbs || "";
  if (args.spec_id === lastSpec) return;
  lastSpec = args.spec_id;
  const figure = args.spec;
  const layout = Object.assign({}, figure.layout, { autosize: true, height: args.height });
  delete layout.width;
  const started = performance.now();
  Plotly.react(mapDiv, figure.data, layout, { displaylogo: false, responsive: true }).then(() => {
    bindEvents();
    setFrameHeight(args.height);
    // For tests and measurements: when the frame's scripts were ready and how long the drawing took (ms).
    mapDiv.setAttribute("data-ready-ms", String(Math.round(readyAt)));
    mapDiv.setAttribute("data-draw-ms", String(Math.round(performance.now() - started)));
    mapDiv.setAttribute("data-rendered", String(Date.now()));
  });
}

window.addEventListener("message", (event) => {
  if (event.data && event.data.type === "streamlit:render") {
    try {
      render(event.data.args || {});
    } catch (error) {
      showProblem("The map could not be drawn: " + error);
    }
  }
});

const readyAt = performance.now(); // since this frame's navigation began: index.html, plotly.min.js and this file
send("streamlit:componentReady", { apiVersion: 1 });
