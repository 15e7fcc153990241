"""Issue 16: a malformed layer list is an error (not a module path), and a reused LayerTap
captures what its own ``with`` block ran, no more."""
from __future__ import annotations

import pytest
import torch

from _hooktools import padded_batch
from sslvitals.errors import SSLVitalsError
from sslvitals.hooks import LayerTap
from test_hooks_fairseq import tiny_hubert


@pytest.mark.parametrize("spec", ["0,x", "1,,2;", "0, 1, two", "-", "encoder.layers[0]"])
def test_malformed_layer_list_is_a_clear_error(spec):
    model = tiny_hubert()
    with pytest.raises(SSLVitalsError, match=r"neither 'all', nor comma-separated layer indices"):
        LayerTap(model, layers=spec)


def test_module_paths_and_layer_lists_still_work():
    model = tiny_hubert()
    assert LayerTap(model, layers="encoder.layers").layer_ids == [0, 1, 2, 3]
    assert LayerTap(model, layers=" 0, -1 ").layer_ids == [0, 3]
    with pytest.raises(SSLVitalsError, match="encoder.nothing"):
        LayerTap(model, layers="encoder.nothing")  # a path, looked up, named in the error


def test_reused_tap_does_not_keep_earlier_frames():
    """Re-entering the same tap gives the same frames as the first block: same count, same
    values (the invariance: what a block returns depends only on what ran inside it)."""
    model = tiny_hubert()
    wav, pad, lens = padded_batch()
    tap = LayerTap(model, layers=[0, 2])
    first = second = None
    for round_ in range(3):
        with torch.no_grad(), tap:
            tap.set_input_lengths(lens)
            model(wav, padding_mask=pad, mask=False, features_only=True)
        frames = tap.frames()  # still readable after the block exits
        if round_ == 0:
            first = frames
        else:
            second = frames
            for layer in (0, 2):
                assert second[layer].shape == first[layer].shape
                torch.testing.assert_close(second[layer], first[layer], rtol=0, atol=0)
    # inside one block, two forwards still accumulate (documented), until clear()
    with torch.no_grad(), tap:
        model(wav[:1, : lens[0]], padding_mask=None, mask=False, features_only=True)
        one = tap.frames()[2].shape[0]
        model(wav[:1, : lens[0]], padding_mask=None, mask=False, features_only=True)
        assert tap.frames()[2].shape[0] == 2 * one
