"""Fixtures of the synthesis tests: one tiny corpus per session (a few seconds of CPU)."""
from __future__ import annotations

import pytest

from sslvitals.synth.espeak import espeak_available


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """About 40 s of train audio, 2 training speakers + 1 held out, with k=12 MFCC targets."""
    if not espeak_available():
        pytest.skip("eSpeak NG library (libespeak-ng.so.1) is not installed")
    from sslvitals.synth import make_mfcc_targets, synthesize_corpus

    out = tmp_path_factory.mktemp("corpus") / "c"
    corpus = synthesize_corpus(out, hours=0.012, speakers=2, heldout_speakers=1,
                               valid_minutes=0.2, probe_minutes=0.3, seed=3, jobs=2, progress=False)
    report = make_mfcc_targets(out, k=12, seed=0, progress=False)
    return corpus, report
