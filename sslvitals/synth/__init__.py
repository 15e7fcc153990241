"""A labelled multi-speaker English speech corpus made offline with eSpeak NG.

* :func:`synthesize_corpus` writes WAVs, fairseq manifests, frame-level phone labels from the
  synthesiser's own phoneme timings, transcripts and Kaldi-style data directories;
* :func:`load_corpus` reads it back;
* :func:`make_mfcc_targets` adds HuBERT first-iteration targets (MFCC k-means, ``<split>.km``).

The command line is ``sslvitals synth OUT --hours 1 --speakers 8``.
"""
from sslvitals.synth.corpus import (
    SPLITS,
    Corpus,
    CorpusSplit,
    Speaker,
    frame_labels,
    load_corpus,
    num_frames,
    synthesize_corpus,
)
from sslvitals.synth.targets import TargetReport, make_mfcc_targets, mfcc_targets_features

__all__ = [
    "SPLITS",
    "Corpus",
    "CorpusSplit",
    "Speaker",
    "frame_labels",
    "load_corpus",
    "num_frames",
    "synthesize_corpus",
    "TargetReport",
    "make_mfcc_targets",
    "mfcc_targets_features",
]
