#!/usr/bin/env bash
# The web page and the HTTP API (processor serve) with a worker (processor run) beside it, on the
# quickstart's bucket (./bucket). Open the URL it prints, upload a photo, watch its variants appear.
# Ctrl-C stops both. Arguments go to processor serve (e.g. --port 9000).
#
# The API is not open: without PROCESSOR_API_KEYS, serve makes an admin token for this run and
# prints the URL that carries it (open http://127.0.0.1:8080/?token=...); opening it logs the
# browser in. Anyone else on this machine or network needs that token.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/processor ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -c "import processor, fastapi, uvicorn, jinja2, multipart" 2>/dev/null \
  || .venv/bin/python -m pip install -q -e ".[api]"
. .venv/bin/activate

# A demo worker looks for new photos every second, even while idle (the default backs off to
# run.idle_backoff_max_s, 5 minutes, which suits a fleet, not someone watching a page).
PROCESSOR_RUN__POLL_INTERVAL_S=1 PROCESSOR_RUN__IDLE_BACKOFF_MAX_S=2 python -m processor run --log-level WARNING &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true' EXIT
python -m processor serve --log-level WARNING "$@"
