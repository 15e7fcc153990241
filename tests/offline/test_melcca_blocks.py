"""Issue 16: the ``cca_mel`` pass offers pairs to its reservoir in blocks and drops pairs that
can no longer enter; its value is still exactly the PWCCA of the bottom-k pairs of the whole
probe, whatever the batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import artifacts
from sslvitals.batching import apply_policy
from sslvitals.hooks import LayerTap
from sslvitals.metrics import cca_similarity
from sslvitals.offline.loaders import expand_checkpoints, load_checkpoint
from sslvitals.offline.melcca import cca_mel_scores, log_mel, pair_with_mel
from sslvitals.probe import ProbeSet
from sslvitals.streaming import frame_keys


def _bottom_k_reference(loaded, probe: ProbeSet, layers: list[int], capacity: int, seed: int):
    """Every utterance alone, every pair with its key, then the ``capacity`` smallest keys."""
    pairs = {ly: ([], [], []) for ly in layers}
    model = loaded.model.eval()
    for batch in probe.batches(1000.0):
        for one in batch.split():
            with torch.no_grad(), LayerTap(model, layers=loaded.tap_layers) as tap:
                loaded.forward_fn(model, one)
            utts, rates = tap.utterances(), tap.frame_rates()
            mel = log_mel(one.wav[0, : int(one.lengths[0])])
            for ly in layers:
                x, m = pair_with_mel(utts[ly][0].float(), mel, rates[ly])
                pairs[ly][0].append(x)
                pairs[ly][1].append(m)
                pairs[ly][2].append(frame_keys(one.index[0], x.shape[0], seed).numpy())
    out = {}
    for ly in layers:
        x, m = torch.cat(pairs[ly][0]), torch.cat(pairs[ly][1])
        keys = np.concatenate(pairs[ly][2])
        keep = np.argsort(keys, kind="stable")[:capacity]
        out[ly] = float(cca_similarity(x[keep].double(), m[keep].double(), method="pwcca"))
    return out


@pytest.fixture(scope="module")
def long_probe(tmp_path_factory):
    """40 utterances of 1-2 s: about 3000 frames per layer, several blocks of pairs."""
    return artifacts.make_probe(tmp_path_factory.mktemp("probe40"), n_utts=40, seconds=(1.0, 2.0))


# full after the first block (later pairs filtered by key) / never full
@pytest.mark.parametrize("capacity", [150, 100000])
def test_cca_mel_is_the_bottom_k_value_whatever_the_batching(wav2vec2_ckpt, long_probe, capacity):
    loaded = load_checkpoint(expand_checkpoints([str(wav2vec2_ckpt)])[0], torch.device("cpu"))
    probe = ProbeSet.from_path(long_probe)
    layers = [0, 1, 2]
    ref = _bottom_k_reference(loaded, probe, layers, capacity, seed=3)
    for batch_seconds in (1.0, 60.0):
        got = cca_mel_scores(loaded.model, loaded.forward_fn,
                             apply_policy(loaded.model, loaded.forward_fn,
                                          probe.batches(batch_seconds)),
                             layers, capacity=capacity, seed=3, tap_layers=loaded.tap_layers)
        for ly in layers:
            assert np.isfinite(got[ly])
            assert got[ly] == pytest.approx(ref[ly], rel=1e-9, abs=1e-12), (batch_seconds, ly)
