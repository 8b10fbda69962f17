#!/usr/bin/env bash
# Peer comparison: scuba vs DuckDB (in-memory, Python module) on the same
# generated events. Measures ingest throughput (rows/s, with and without the
# leaves' log fsync) and the median wall time of Scuba-shaped queries; see
# compare.py for the details.
#
# Usage: benches/compare.sh            (ROWS=2000000 by default)
#        ROWS=200000 benches/compare.sh
# Needs: cargo, python3 (venv + pip reach PyPI once, to install duckdb into
# benches/.venv; nothing is installed outside it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
ROWS="${ROWS:-2000000}"
SEED="${SEED:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scuba-target}"

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet duckdb
fi

SECONDS=0
(cd "$root" && cargo build --release -p scuba-cli)
echo "build: ${SECONDS} s" >&2
scubactl="$CARGO_TARGET_DIR/release/scubactl"

data="$(mktemp --suffix=.jsonl)"
trap 'rm -f "$data"' EXIT
SECONDS=0
"$scubactl" gen --rows "$ROWS" --seed "$SEED" > "$data"
echo "gen: ${SECONDS} s" >&2

"$venv/bin/python" -u "$here/compare.py" "$scubactl" "$data"
