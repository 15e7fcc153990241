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
# resumable: rows already in the CSV are not computed again. k, reservoir, silhouette sample and
# seed come from the run's vitals.jsonl (copied into stock/ by strip_vitals.py), so the offline
# values equal the logged ones; extra options can be passed in SCORE_ARGS.
# shellcheck disable=SC2086
sslvitals score "$RUN_DIR/stock" --probe "$PROBE" --run "$CONFIG" --metrics default \
  ${SCORE_ARGS:-} --out "$EXP/scores/$CONFIG.csv"
