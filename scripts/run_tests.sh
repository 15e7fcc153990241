#!/usr/bin/env bash
# Run the test suite with the project's venv. Extra arguments go to pytest.
# pytest's exit code 5 ("no tests collected") is turned into a failure: it always means a
# broken selection or collection, never success.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${SSLVITALS_VENV:-$ROOT/.venv}/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "no virtual environment at $PY: run 'make install' first" >&2
  exit 1
fi
"$PY" -m pytest tests "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $rc
