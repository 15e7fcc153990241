#!/usr/bin/env bash
# Metrics at every saved checkpoint of one run, offline (the same numbers the plugin logs in
# vitals.jsonl during training, plus cca_mel), on the probe.
#
#   recipes/paper/full/score.sh CONFIG
#
# Checkpoints trained with the plugin name its wrapper task; strip_vitals.py first writes
# stock copies (exp/.../stock/), which every fairseq tool loads.
set -euo pipefail
CONFIG=${1:?usage: score.sh CONFIG}
: "${PROBE:?set PROBE}"
EXP=${EXP:-exp/paper}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=$EXP/pretrain/$CONFIG
python "$HERE/strip_vitals.py" "$RUN_DIR/checkpoints" --out "$RUN_DIR/stock"
mkdir -p "$EXP/scores"
# resumable: rows already in the CSV are not computed again
sslvitals score "$RUN_DIR/stock" --probe "$PROBE" --run "$CONFIG" \
  --metrics default --k 1024 --reservoir-size 40000 --silhouette-sample 10000 \
  --out "$EXP/scores/$CONFIG.csv"
