#!/usr/bin/env bash
# Do the metrics at an early update predict the final WER better than the loss does?
#
#   recipes/paper/full/correlate.sh [EARLY_UPDATE]     (default 50000)
#
# Uses the training records (vitals.jsonl, one per run; the validation loss is in them) and the
# WERs gathered by collect_wer.py. Writes $EXP/results/correlations_<early>.{csv,md}, the same at
# the last update for reference, figures, and the same from the offline scores if score.sh ran.
set -euo pipefail
EARLY=${1:-50000}
EXP=${EXP:-exp/paper}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$EXP/results
mkdir -p "$OUT/figures"
python "$HERE/collect_wer.py" "$EXP" --out "$EXP/downstream.csv"
JSONL=("$EXP"/pretrain/*/checkpoints/vitals.jsonl)
sslvitals correlate "${JSONL[@]}" "$EXP/downstream.csv" --step "$EARLY" --out "$OUT/correlations_$EARLY"
sslvitals correlate "${JSONL[@]}" "$EXP/downstream.csv" --step last --out "$OUT/correlations_last"
sslvitals plot "${JSONL[@]}" --downstream "$EXP/downstream.csv" --step "$EARLY" \
  --metrics inertia,davies_bouldin,rankme_t,effective_rank --out "$OUT/figures/paper"
if compgen -G "$EXP/scores/*.csv" > /dev/null; then
  sslvitals correlate "$EXP"/scores/*.csv "$EXP/downstream.csv" --step "$EARLY" \
    --out "$OUT/correlations_offline_$EARLY"
fi
sslvitals table "${JSONL[@]}" --steps last --out "$OUT/table_last.md"
