"""LayerTap on MR-HuBERT (s3prl's port of fairseq's multires_hubert, tiny random weights).

MR-HuBERT's forward discards the per-block results, so the reference re-runs its U-Net step
by step with the model's own modules and keeps the ``layer_results`` every
``TransformerEncoder`` returns.
"""
from __future__ import annotations

import pytest
import torch

from _hooktools import TINY_CONV_STR, TOL, hook_snapshot, hooks_left, max_diff_valid, padded_batch
from sslvitals.hooks import LayerTap, alignments_to_frame_labels, conv_num_frames, resample_labels

hubert_model = pytest.importorskip(
    "s3prl.upstream.multires_hubert.hubert_model",
    reason="s3prl is not installed (scripts/install.sh installs s3prl==0.4.18 --no-deps)",
)


def tiny_mrhubert(ratios=(1, 2)):
    torch.manual_seed(0)
    cfg = hubert_model.MultiresHubertConfig(
        label_rate=50,
        label_rate_ratios=list(ratios),
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        conv_feature_layers=TINY_CONV_STR,
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=32,
    )
    task = hubert_model.MultiresHubertPretrainingConfig(label_rate=50)
    n_heads = len(ratios) // 2 + 1
    return hubert_model.MultiresHubertModel(cfg, task, [list(range(10))] * n_heads).eval()


def reference_layers(model, wav, pad):
    """Per block ``(output (B, T, C), valid mask (B, T))`` in U-Net order, and layer 0."""
    outs = []
    with torch.no_grad():
        x = model.feature_extractor(wav).transpose(1, 2)
        x = model.layer_norm(x)
        pm = model.forward_padding_mask(x, pad)
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        first = model.encoders[0]
        x0 = x.masked_fill(pm[..., None], 0.0)
        x0 = x0 + first.pos_conv(x0.transpose(1, 2)).transpose(1, 2)
        if not first.layer_norm_first:
            x0 = first.layer_norm(x0)
        layer0 = (x0, ~pm)
        residuals = []
        for i, enc in enumerate(model.encoders):
            x, results = enc(x, padding_mask=pm, layer=None)
            outs += [(r[0].transpose(0, 1), ~pm) for r in results]
            residuals.append(x)
            x, pm, _ = model.downsample_modules[i](x, padding=pm)
        res, results = model.middle_encoder(x, padding_mask=pm, layer=None)
        outs += [(r[0].transpose(0, 1), ~pm) for r in results]
        x = x + res
        residuals.reverse()
        for i, dec in enumerate(model.decoders):
            x, pm, _ = model.upsample_modules[i](x, padding=pm)
            x, results = dec(x, padding_mask=pm, layer=None)
            outs += [(r[0].transpose(0, 1), ~pm) for r in results]
            n = min(x.shape[1], residuals[i].shape[1])
            x, pm = x[:, :n] + residuals[i][:, :n], pm[:, :n]
    return layer0, outs


def test_layers_equal_unet_block_outputs_and_report_their_rates():
    model = tiny_mrhubert()
    before = hook_snapshot(model)
    wav, pad, lens = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
    assert hooks_left(model, before) == []
    assert tap.architecture == "s3prl.MultiresHubertModel"
    assert tap.num_layers == 6  # encoder 2 + middle 2 + decoder 2
    assert [p for p, _ in tap.plan.blocks] == [
        "encoders.0.layers.0", "encoders.0.layers.1", "middle_encoder.layers.0",
        "middle_encoder.layers.1", "decoders.0.layers.0", "decoders.0.layers.1",
    ]
    assert tap.frame_rates() == {0: 50.0, 1: 50.0, 2: 50.0, 3: 25.0, 4: 25.0, 5: 50.0, 6: 50.0}

    layer0, ref = reference_layers(model, wav, pad)
    utts = tap.utterances()
    n50 = [conv_num_frames(int(n)) for n in lens]
    n25 = [(n + 1) // 2 for n in n50]
    expected_counts = {0: n50, 1: n50, 2: n50, 3: n25, 4: n25, 5: [2 * n for n in n25],
                       6: [2 * n for n in n25]}
    for k in range(7):
        x, valid = layer0 if k == 0 else ref[k - 1]
        counts = [u.shape[0] for u in utts[k]]
        assert counts == expected_counts[k], k
        # the model's own padding masks never count fewer frames than the conv framing
        assert all(c <= int(v) for c, v in zip(counts, valid.sum(1))), k
        assert max_diff_valid(utts[k], x, counts) <= TOL, k


def test_labels_line_up_at_each_layer_rate():
    """Frame labels built at 50 Hz and resampled to a 25 Hz layer have its frame count, and
    agree with labels built directly at 25 Hz away from phone boundaries."""
    model = tiny_mrhubert()
    wav, pad, lens = padded_batch()
    with LayerTap(model, layers=[1, 3]) as tap:
        with torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
    rates = tap.frame_rates()
    ali = [(0.0, 0.2, 1), (0.2, 0.5, 2), (0.5, 1.3, 3)]
    for u50, u25 in zip(tap.utterances()[1], tap.utterances()[3]):
        lab50 = alignments_to_frame_labels(ali, u50.shape[0], frame_rate=rates[1])
        lab25 = resample_labels(lab50, rates[1], rates[3], u25.shape[0])
        direct25 = alignments_to_frame_labels(ali, u25.shape[0], frame_rate=rates[3])
        assert lab25.shape == (u25.shape[0],)
        assert (lab25 == direct25).mean() > 0.9


def test_two_resolution_steps_report_each_rate():
    """label_rate_ratios (1, 2, 1, 2): 50 Hz -> 25 Hz -> 12.5 Hz in the middle, back up."""
    model = tiny_mrhubert(ratios=(1, 2, 1, 2))
    tap = LayerTap(model)
    assert tap.num_layers == 10
    rates = tap.frame_rates()
    assert [rates[k] for k in range(11)] == [50.0, 50.0, 50.0, 25.0, 25.0, 12.5, 12.5,
                                             25.0, 25.0, 50.0, 50.0]
    wav, pad, _ = padded_batch()
    with tap:
        with torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
    # every layer's longest utterance has (about) duration x rate frames
    dur = wav.shape[1] / 16000
    for k, utts in tap.utterances().items():
        assert abs(max(u.shape[0] for u in utts) - dur * rates[k]) <= 3, k
