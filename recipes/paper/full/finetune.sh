#!/usr/bin/env bash
# Downstream ASR: fine-tune the final checkpoint of one run on Libri-light 10 h with fairseq's
# stock HuBERT recipe (examples/hubert/config/finetune/base_10h.yaml, CTC on letters), then
# decode dev-other / test-clean / test-other with Viterbi (no LM) to WER.
#
#   recipes/paper/full/finetune.sh CONFIG [extra fine-tuning overrides...]
#
# Environment: FT_DATA (train.tsv/.ltr = Libri-light 10 h, valid.tsv/.ltr = dev-other,
# test-clean.tsv/.ltr, test-other.tsv/.ltr, dict.ltr.txt; fairseq's
# examples/wav2vec/libri_labels.py writes .ltr/.wrd), FINAL_UPDATE (default 200000), EXP.
# base_10h.yaml runs 25k updates with 3.2M samples per GPU batch on the GPUs you give it
# (the HuBERT paper used 8: distributed_training.distributed_world_size=8).
# model._name=hubert_ctc_patched (fairseq_ctc_fix/) works around fairseq issue #4916.
set -euo pipefail
CONFIG=${1:?usage: finetune.sh CONFIG [overrides...]}; shift
: "${FT_DATA:?set FT_DATA}"
EXP=${EXP:-exp/paper}
FINAL_UPDATE=${FINAL_UPDATE:-200000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FS=$(python -c 'import fairseq, os; print(os.path.dirname(fairseq.__file__))')
RUN_DIR=$EXP/pretrain/$CONFIG
SRC=$(ls "$RUN_DIR"/checkpoints/checkpoint_*_"$FINAL_UPDATE".pt | head -n 1)
STOCK=$RUN_DIR/stock/$(basename "$SRC")
python "$HERE/strip_vitals.py" "$SRC" --out "$STOCK"
FT_DIR=$EXP/finetune/$CONFIG
fairseq-hydra-train \
  --config-dir "$FS/examples/hubert/config/finetune" --config-name base_10h \
  common.user_dir="$HERE/fairseq_ctc_fix" model._name=hubert_ctc_patched \
  task.data="$FT_DATA" task.label_dir="$FT_DATA" model.w2v_path="$(realpath "$STOCK")" \
  checkpoint.save_dir="$FT_DIR/checkpoints" hydra.run.dir="$FT_DIR" "$@"
# Greedy (Viterbi) CTC decoding without LM; fairseq's infer.py does not import on Python 3.11.
for subset in dev-other test-clean test-other; do
  python "$HERE/decode_ctc.py" "$FT_DIR/checkpoints/checkpoint_best.pt" --data "$FT_DATA" \
    --subset "$subset" --user-dir "$HERE/fairseq_ctc_fix" --out "$FT_DIR/decode/$subset/wer"
done
