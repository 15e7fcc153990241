#!/usr/bin/env bash
# Build .venv from nothing on a CPU-only Linux machine with Python 3.11.
# Idempotent: each stage leaves a stamp in .venv/.stamps and is skipped when done.
# Usage: scripts/install.sh [--no-system]   (--no-system skips apt-get for espeak-ng/flite)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SSLVITALS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMPS="$VENV/.stamps"
export PIP_CONSTRAINT="$ROOT/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
WITH_SYSTEM=1
[[ "${1:-}" == "--no-system" ]] && WITH_SYSTEM=0

say() { echo "[install] $*"; }
done_stage() { [[ -f "$STAMPS/$1" ]]; }
mark() { mkdir -p "$STAMPS"; touch "$STAMPS/$1"; }

# 1. System packages: speech synthesisers for the embedded corpus.
if [[ $WITH_SYSTEM == 1 ]] && ! command -v espeak-ng >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "apt-get install espeak-ng flite libespeak-ng1"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite libespeak-ng1 >/dev/null
  else
    say "WARNING: espeak-ng missing and cannot apt-get (not root); install espeak-ng and flite yourself for 'sslvitals synth'"
  fi
fi

# 2. The virtual environment.
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)

if ! done_stage torch; then
  say "CPU torch 2.13.0"
  "${PIP[@]}" --upgrade "pip>=24" wheel "setuptools>=77.0.3"
  "${PIP[@]}" torch==2.13.0
  mark torch
fi

if ! done_stage fairseq; then
  say "fairseq-fixed 0.12.3.1 (builds from source, about 3-4 minutes)"
  "${PIP[@]}" "cython<3.2" numpy
  "${PIP[@]}" fairseq-fixed==0.12.3.1
  mark fairseq
fi

# torchaudio arrives as a CUDA build whose compiled library cannot load beside CPU torch;
# its pure-Python API (used by ESPnet's torchaudio HuBERT) works without it.
if ! done_stage torchaudio_fix; then
  TA_DIR="$("$VENV/bin/python" - <<'PYEOF'
import importlib.util, os
spec = importlib.util.find_spec("torchaudio")
print(os.path.dirname(spec.origin) if spec else "")
PYEOF
)"
  if [[ -n "$TA_DIR" && -d "$TA_DIR/lib" ]]; then
    say "removing torchaudio's CUDA-only compiled libraries"
    rm -f "$TA_DIR"/lib/*.so
  fi
  mark torchaudio_fix
fi

if ! done_stage espnet; then
  say "ESPnet 202511 without its setuptools pin"
  "${PIP[@]}" --no-deps espnet==202511
  "${PIP[@]}" packaging configargparse typeguard humanfriendly scipy filelock librosa "jamo==0.4.1" \
      PyYAML soundfile h5py kaldiio torch_complex nltk "numpy>=2" protobuf "hydra-core==1.3.2" opt-einsum \
      lightning "sentencepiece==0.2.0" pyworld "pypinyin<=0.44.0" espnet_tts_frontend einops \
      "fast-bss-eval==0.1.3" "asteroid_filterbanks==0.4.0" editdistance "importlib-metadata<5.0"
  # ci_sdr (speech enhancement losses only) is left out: its metadata declares a git URL
  # dependency, which current pip refuses to install; HuBERT/SSL training never imports it.
  mark espnet
fi

if ! done_stage speechbrain; then
  say "SpeechBrain 1.1.2 (BEST-RQ and wav2vec 2.0 pretraining recipes)"
  "${PIP[@]}" "speechbrain==1.1.2"
  mark speechbrain
fi

if ! done_stage extras; then
  say "faiss-cpu, scikit-learn, transformers, s3prl, plotting, test tools"
  "${PIP[@]}" "faiss-cpu==1.15.1" scikit-learn pandas matplotlib tensorboard tqdm transformers \
      pytest pytest-timeout "hydra-core==1.3.2" "omegaconf==2.3.0"
  "${PIP[@]}" --no-deps "s3prl==0.4.18"
  mark extras
fi

if ! done_stage trainers; then
  say "accelerate (needed by transformers.Trainer; Lightning came with ESPnet)"
  "${PIP[@]}" accelerate lightning
  mark trainers
fi

say "sslvitals (editable)"
"${PIP[@]}" --no-deps -e "$ROOT"
say "done: $VENV"
