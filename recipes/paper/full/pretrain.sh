#!/usr/bin/env bash
# Pretrain one HuBERT Base configuration of the paper recipe with fairseq, sslvitals measuring
# every layer on the probe at each validation (every 25k updates, when a checkpoint is saved).
#
#   recipes/paper/full/pretrain.sh CONFIG [extra Hydra overrides...]
#
# CONFIG: a file name (without .yaml) in recipes/paper/full/fairseq/paper/, e.g. it1_mask080_lr5e-4.
# Environment (see README.md):
#   DATA       folder with train.tsv / valid.tsv (fairseq manifests of LibriSpeech 960 h / dev)
#   LABELS_IT1 folder with train.km / valid.km / dict.km.txt: MFCC k-means targets (k=100)
#   LABELS_IT2 folder with the same for iteration 2 (k=500 on layer 6 of it1_mask080_lr5e-4)
#   PROBE      the probe manifest written by make_probe.py (1 h of train-clean-100)
#   EXP        experiment root (default: exp/paper)
# The stock recipe trains on 32 GPUs (4 nodes x 8); on fewer, keep the batch with e.g.
#   distributed_training.distributed_world_size=8 optimization.update_freq='[4]'
set -euo pipefail
CONFIG=${1:?usage: pretrain.sh CONFIG [overrides...]}; shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
[[ -f "$HERE/fairseq/paper/$CONFIG.yaml" ]] || { echo "no configuration $CONFIG in $HERE/fairseq/paper" >&2; exit 2; }
: "${DATA:?set DATA}" "${PROBE:?set PROBE}"
EXP=${EXP:-exp/paper}
case "$CONFIG" in
  it1_*) LABELS=${LABELS_IT1:?set LABELS_IT1} ;;
  it2_*) LABELS=${LABELS_IT2:?set LABELS_IT2} ;;
  *) echo "CONFIG must start with it1_ or it2_" >&2; exit 2 ;;
esac
FAIRSEQ_CONFIG=$(python -c 'import fairseq, os; print(os.path.join(os.path.dirname(fairseq.__file__), "examples/hubert/config/pretrain"))')
RUN_DIR=$EXP/pretrain/$CONFIG
mkdir -p "$RUN_DIR"
# fairseq resumes from $RUN_DIR/checkpoints/checkpoint_last.pt when it exists (rerun the same
# command after an interruption); the plugin lets torch's safe loader read it.
fairseq-hydra-train \
  --config-dir "$FAIRSEQ_CONFIG" --config-name hubert_base_librispeech \
  "hydra.searchpath=[file://$HERE/fairseq,file://$REPO/recipes/fairseq]" \
  +paper="$CONFIG" +sslvitals=hubert \
  common.user_dir="$(sslvitals fairseq-user-dir)" \
  task.data="$DATA" task.label_dir="$LABELS" 'task.labels=["km"]' model.label_rate=50 \
  checkpoint.save_dir="$RUN_DIR/checkpoints" hydra.run.dir="$RUN_DIR" \
  task.vitals.probe="$PROBE" task.vitals.k=1024 task.vitals.reservoir_size=40000 \
  "$@"
