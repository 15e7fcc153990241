#!/usr/bin/env bash
# HuBERT targets with fairseq's examples/hubert/simple_kmeans scripts.
#
#   recipes/paper/full/labels.sh it1             # MFCC features, k=100  -> $LABELS_IT1
#   recipes/paper/full/labels.sh it2 CHECKPOINT  # layer-6 features of an it1 model, k=500 -> $LABELS_IT2
#
# CHECKPOINT: a *stock* checkpoint (strip_vitals.py output), e.g.
#   exp/paper/pretrain/it1_mask080_lr5e-4/stock/checkpoint_<E>_200000.pt
# Environment: DATA (train.tsv/valid.tsv), LABELS_IT1 / LABELS_IT2 (outputs), FEAT (scratch for
# features: 960 h of 768-dim HuBERT features at 50 Hz take about 530 GB, 39-dim MFCC at 100 Hz
# about 55 GB), NSHARD (default 1).
# Needs, beyond sslvitals: pip install npy-append-array (simple_kmeans writes features with it)
# and a torchaudio that loads with your torch (the MFCC dump calls it). Not run on the
# project's CPU machine, whose torchaudio build cannot load its compiled library.
set -euo pipefail
ITER=${1:?usage: labels.sh it1|it2 [CHECKPOINT]}
: "${DATA:?set DATA}" "${FEAT:?set FEAT}"
NSHARD=${NSHARD:-1}
SK=$(python -c 'import fairseq, os; print(os.path.join(os.path.dirname(fairseq.__file__), "examples/hubert/simple_kmeans"))')
case "$ITER" in
  it1) OUT=${LABELS_IT1:?set LABELS_IT1}; K=100; F=$FEAT/mfcc ;;
  it2) OUT=${LABELS_IT2:?set LABELS_IT2}; K=500; F=$FEAT/it2_L6; CKPT=${2:?give the it1 checkpoint} ;;
  *) echo "first argument: it1 or it2" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$F"
for split in train valid; do
  for ((rank = 0; rank < NSHARD; rank++)); do
    if [[ $ITER == it1 ]]; then
      python "$SK/dump_mfcc_feature.py" "$DATA" "$split" "$NSHARD" "$rank" "$F"
    else
      # run with the allow-list of the classes fairseq checkpoints hold (torch's safe loader)
      python -m sslvitals.integrations.fairseq.safe_load "$SK/dump_hubert_feature.py" \
        "$DATA" "$split" "$CKPT" 6 "$NSHARD" "$rank" "$F"
    fi
  done
done
# HuBERT fits k-means on a 10% subset of the train features
python "$SK/learn_kmeans.py" "$F" train "$NSHARD" "$F/km_$K.bin" "$K" --percent 0.1
for split in train valid; do
  for ((rank = 0; rank < NSHARD; rank++)); do
    python "$SK/dump_km_label.py" "$F" "$split" "$F/km_$K.bin" "$NSHARD" "$rank" "$OUT"
  done
  for ((rank = 0; rank < NSHARD; rank++)); do cat "$OUT/${split}_${rank}_${NSHARD}.km"; done > "$OUT/$split.km"
done
for ((i = 0; i < K; i++)); do echo "$i 1"; done > "$OUT/dict.km.txt"
echo "targets in $OUT (k=$K)"
