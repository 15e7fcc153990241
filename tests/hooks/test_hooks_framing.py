"""Frame arithmetic and frame labels, against hand-computed cases and brute-force references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sslvitals.errors import SSLVitalsError
from sslvitals.hooks.framing import (
    DEFAULT_CONV_LAYERS,
    alignments_to_frame_labels,
    conv_num_frames,
    frame_centres,
    frame_shift,
    receptive_field,
    resample_labels,
)


def test_default_stack_matches_closed_form():
    for s in [400, 401, 719, 720, 721, 8000, 12345, 16000, 19200, 160000]:
        assert conv_num_frames(s) == (s - 400) // 320 + 1
    for s in [0, 1, 200, 399]:
        assert conv_num_frames(s) == 0
    assert conv_num_frames(16000) == 49
    assert receptive_field() == (400, 320)


def test_hand_computed_small_stack():
    stack = ((1, 4, 2), (1, 3, 1))
    # 10 samples -> floor((10-4)/2)+1 = 4 -> floor((4-3)/1)+1 = 2
    assert conv_num_frames(10, stack) == 2
    assert conv_num_frames(5, stack) == 0  # 5 -> 1 frame, shorter than the second kernel
    # field = 4 + (3-1)*2 = 8, hop = 2
    assert receptive_field(stack) == (8, 2)
    assert receptive_field([(4, 2), (3, 1)]) == (8, 2)


def test_array_and_tensor_inputs_agree_with_real_convolutions():
    """The formula equals the output length of real un-padded nn.Conv1d layers."""
    convs = nn.Sequential(*[nn.Conv1d(1, 1, k, s) for _, k, s in DEFAULT_CONV_LAYERS])
    lengths = np.array([400, 555, 3201, 8000, 12345])
    got_np = conv_num_frames(lengths)
    got_t = conv_num_frames(torch.from_numpy(lengths))
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    with torch.no_grad():
        for s, a, b in zip(lengths, got_np, got_t):
            ref = convs(torch.zeros(1, 1, int(s))).shape[-1]
            assert a == ref and int(b) == ref


def test_conv_num_frames_rejects_bad_input():
    with pytest.raises(SSLVitalsError, match="non-negative"):
        conv_num_frames(-1)
    with pytest.raises(SSLVitalsError, match="kernel, stride"):
        conv_num_frames(100, [(1, 2, 3, 4)])
    with pytest.raises(SSLVitalsError, match=">= 1"):
        conv_num_frames(100, [(1, 0, 1)])


def test_frame_centres_follow_the_receptive_field():
    # Frame i covers samples [320 i, 320 i + 400): centre (320 i + 200) / 16000.
    c = frame_centres(5)
    np.testing.assert_allclose(c, [(320 * i + 200) / 16000 for i in range(5)], atol=1e-12)
    assert frame_shift() == pytest.approx(0.0025)
    # A 25 Hz frame pooling 50 Hz frames 2j and 2j+1 is centred at their mean.
    c50, c25 = frame_centres(8), frame_centres(4, 25.0)
    np.testing.assert_allclose(c25, (c50[0::2] + c50[1::2]) / 2, atol=1e-12)


def _brute_force_labels(alignments, num_frames, rate, offset):
    out = []
    for i in range(num_frames):
        t = offset + i / rate
        hit = [p for s, e, p in alignments if s <= t < e]
        if hit:
            out.append(hit[0])
        else:  # nearest boundary, earlier segment on ties
            best = min(
                ((min(abs(t - s), abs(t - e)), s, p) for s, e, p in alignments),
                key=lambda z: (z[0], z[1]),
            )
            out.append(best[2])
    return out


def test_alignment_labels_hand_case():
    ali = [(0.0, 0.05, 3), (0.05, 0.2, 7)]
    # centres 0.0125, 0.0325, 0.0525, 0.0725, 0.0925
    assert alignments_to_frame_labels(ali, 5).tolist() == [3, 3, 7, 7, 7]
    # unsorted input gives the same
    assert alignments_to_frame_labels(ali[::-1], 5).tolist() == [3, 3, 7, 7, 7]
    # a boundary exactly on a centre belongs to the segment that starts there
    ali2 = [(0.0, 0.0325, 1), (0.0325, 1.0, 2)]
    assert alignments_to_frame_labels(ali2, 3).tolist() == [1, 2, 2]


def test_alignment_labels_gaps_and_fill():
    ali = [(0.0, 0.03, 1), (0.06, 0.08, 2)]
    # centres .0125 .0325 .0525 .0725 .0925 .1125
    assert alignments_to_frame_labels(ali, 6).tolist() == [1, 1, 2, 2, 2, 2]
    assert alignments_to_frame_labels(ali, 6, fill=0).tolist() == [1, 0, 0, 2, 0, 0]


def test_alignment_labels_match_brute_force(rng):
    bounds = np.sort(rng.uniform(0, 2.0, size=40))
    ali = [(float(a), float(b), int(rng.integers(0, 39)))
           for a, b in zip(bounds[:-1:2], bounds[1::2])]
    for rate in (50.0, 25.0, 12.5):
        n = int(2.2 * rate)
        offset = 0.5 / rate + frame_shift()
        got = alignments_to_frame_labels(ali, n, frame_rate=rate)
        assert got.tolist() == _brute_force_labels(ali, n, rate, offset)


def test_alignment_labels_default_offset_at_25hz():
    ali = [(0.0, 0.0225, 4), (0.0225, 1.0, 5)]
    # 25 Hz frame 0 is centred at 0.0225 s: it falls in the second segment.
    assert alignments_to_frame_labels(ali, 2, frame_rate=25.0).tolist() == [5, 5]
    assert alignments_to_frame_labels(ali, 2, frame_rate=25.0, offset=0.01).tolist() == [4, 5]


def test_alignment_labels_errors():
    with pytest.raises(SSLVitalsError, match="overlap"):
        alignments_to_frame_labels([(0.0, 0.5, 1), (0.4, 0.6, 2)], 10)
    with pytest.raises(SSLVitalsError, match="empty"):
        alignments_to_frame_labels([], 10)
    assert alignments_to_frame_labels([], 3, fill=9).tolist() == [9, 9, 9]
    with pytest.raises(SSLVitalsError, match="ends before"):
        alignments_to_frame_labels([(0.5, 0.1, 1)], 3)
    with pytest.raises(SSLVitalsError, match=">= 0"):
        alignments_to_frame_labels([(0.0, 0.1, -1)], 3)


def test_resample_hand_cases():
    assert resample_labels([1, 2, 3, 4, 5, 6], 50, 25, 3).tolist() == [1, 3, 5]
    assert resample_labels([7, 8], 25, 50, 4).tolist() == [7, 7, 8, 8]
    assert resample_labels(np.array([1, 2, 3]), 50, 50, 3).tolist() == [1, 2, 3]
    # past the end: clamped to the last source frame
    assert resample_labels([1, 2], 50, 50, 4).tolist() == [1, 2, 2, 2]
    assert resample_labels(torch.tensor([4, 5, 6]), 50.0, 25.0, 0).tolist() == []


def test_resample_matches_nearest_centre(rng):
    """Each target frame takes the source frame with the nearest centre (earlier on ties)."""
    src = rng.integers(0, 50, size=97)
    for src_rate, dst_rate in [(50, 25), (50, 20), (25, 50), (50, 12.5), (50, 30)]:
        n = int(len(src) * dst_rate / src_rate)
        got = resample_labels(src, src_rate, dst_rate, n)
        c_src = frame_centres(len(src), src_rate)
        c_dst = frame_centres(n, dst_rate)
        ref = []
        for t in c_dst:
            d = np.abs(c_src - t)
            ref.append(src[int(np.flatnonzero(d <= d.min() + 1e-9)[0])])
        assert got.tolist() == ref, (src_rate, dst_rate)


def test_resample_errors():
    with pytest.raises(SSLVitalsError, match=r"\(T,\)"):
        resample_labels(np.zeros((2, 2)), 50, 25, 1)
    with pytest.raises(SSLVitalsError, match="positive frame rate"):
        resample_labels([1, 2], 0, 25, 1)
    with pytest.raises(SSLVitalsError, match="empty"):
        resample_labels([], 50, 25, 1)
