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


class FairseqMainOrderMRHubert(hubert_model.MultiresHubertModel):
    """s3prl's port run in fairseq main's order: decoder i after
    ``upsample_modules[label_nums - 2 - i]`` (the up-sampler that inverts the down-sampler of
    the encoder whose output the decoder's output is summed with). Feature pass only."""

    def forward(self, source, target_list=None, padding_mask=None, mask=False,
                features_only=True, output_layer=None):
        assert features_only and not mask
        x = self.layer_norm(self.forward_features(source).transpose(1, 2))
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(x, padding_mask)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        skips = []
        for i in range(self.label_nums - 1):
            x, _ = self.encoders[i](x, padding_mask=padding_mask, layer=None)
            skips.append(x)
            x, padding_mask, _ = self.downsample_modules[i](x, padding=padding_mask)
        x = x + self.middle_encoder(x, padding_mask=padding_mask, layer=None)[0]
        for i in range(self.label_nums - 1):
            up = self.upsample_modules[self.label_nums - 2 - i]
            x, padding_mask, _ = up(x, padding=padding_mask)
            x, _ = self.decoders[i](x, padding_mask=padding_mask, layer=None)
            skip = skips[self.label_nums - 2 - i]
            n = min(x.shape[1], skip.shape[1])
            x, padding_mask = x[:, :n] + skip[:, :n], padding_mask[:, :n]
        return {"x": x, "padding_mask": padding_mask}


def tiny_mrhubert_main(ratios=(1, 2, 2, 5)):
    model = tiny_mrhubert(ratios)
    model.__class__ = FairseqMainOrderMRHubert
    return model


def reference_layers(model, wav, pad, order="s3prl"):
    """Per block ``(output (B, T, C), valid mask (B, T))`` in U-Net order, and layer 0.

    ``order``: ``"s3prl"`` runs decoder i after ``upsample_modules[i]``, ``"main"`` after
    ``upsample_modules[n - 1 - i]`` (fairseq main)."""
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
            up = i if order == "s3prl" else len(model.decoders) - 1 - i
            x, pm, _ = model.upsample_modules[up](x, padding=pm)
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
    # the decoder's up-sampler makes 2 * n25 frames; an odd n50 gives one frame more than the
    # 50 Hz encoder layers have, which the model's skip sum trims and sslvitals does not count
    expected_counts = {0: n50, 1: n50, 2: n50, 3: n25, 4: n25, 5: n50, 6: n50}
    assert any(2 * b != a for a, b in zip(n50, n25))  # the batch has an odd length
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


def _ceil(n, up, down):
    return -(-n * up // down)


def _check_layers(model, order, expected_rates, expected_counts):
    tap = LayerTap(model)
    assert tap.frame_rates() == expected_rates
    wav, pad, lens = padded_batch()
    with tap, torch.no_grad():
        model(wav, padding_mask=pad, mask=False, features_only=True)
    layer0, ref = reference_layers(model, wav, pad, order=order)
    utts = tap.utterances()
    n50 = [conv_num_frames(int(n)) for n in lens]
    for k in range(tap.num_layers + 1):
        x, valid = layer0 if k == 0 else ref[k - 1]
        counts = [u.shape[0] for u in utts[k]]
        assert counts == [expected_counts[k](n) for n in n50], k
        assert all(c <= int(v) for c, v in zip(counts, valid.sum(1))), k
        assert max_diff_valid(utts[k], x, counts) <= TOL, k


def test_fairseq_main_decoder_order_with_uneven_ratios():
    """fairseq main runs decoder i after upsample_modules[n - 1 - i]: with ratios [1,2,2,5]
    the decoders run at 25 Hz then 50 Hz (10 Hz in the middle), each trimmed to the frames of
    the encoder layers at its rate."""
    model = tiny_mrhubert_main((1, 2, 2, 5))
    assert [u.upsample_rate for u in model.upsample_modules] == [2, 5]  # 25->50, 10->25

    def n25(n):
        return _ceil(n, 1, 2)

    def n10(n):
        return _ceil(n25(n), 2, 5)

    def dec0(n):
        return min(_ceil(n10(n), 5, 2), n25(n))

    def dec1(n):
        return min(_ceil(dec0(n), 2, 1), n)

    rates = [50.0] * 3 + [25.0] * 2 + [10.0] * 2 + [25.0] * 2 + [50.0] * 2
    counts = [lambda n: n] * 3 + [n25] * 2 + [n10] * 2 + [dec0] * 2 + [dec1] * 2
    _check_layers(model, "main", dict(enumerate(rates)), dict(enumerate(counts)))


def test_s3prl_decoder_order_with_uneven_ratios():
    """s3prl's port runs decoder i after upsample_modules[i]: with [1,2,2,5] the first decoder
    runs at 20 Hz (its own frames: no encoder layer runs at that rate), the second at 50 Hz."""
    model = tiny_mrhubert((1, 2, 2, 5))

    def n25(n):
        return _ceil(n, 1, 2)

    def n10(n):
        return _ceil(n25(n), 2, 5)

    def dec0(n):
        return _ceil(n10(n), 2, 1)

    def dec1(n):
        return min(_ceil(min(dec0(n), n25(n)), 5, 2), n)

    rates = [50.0] * 3 + [25.0] * 2 + [10.0] * 2 + [20.0] * 2 + [50.0] * 2
    counts = [lambda n: n] * 3 + [n25] * 2 + [n10] * 2 + [dec0] * 2 + [dec1] * 2
    _check_layers(model, "s3prl", dict(enumerate(rates)), dict(enumerate(counts)))


@pytest.mark.parametrize("main_order", [False, True])
def test_padding_mask_none_works_inside_the_tap(main_order):
    """The README snippet passes padding_mask=None; MR-HuBERT itself fails on it (its skip sum
    slices the mask), LayerTap gives it an all-False mask: same frames as an explicit one."""
    model = tiny_mrhubert_main((1, 2)) if main_order else tiny_mrhubert()
    wav, _, lens = padded_batch(lengths=(19200,))
    if not main_order:
        with pytest.raises(TypeError), torch.no_grad():
            model(source=wav, padding_mask=None, mask=False, features_only=True)
    with LayerTap(model) as tap, torch.no_grad():
        model(source=wav, padding_mask=None, mask=False, features_only=True)
    got = tap.utterances()
    with LayerTap(model) as tap, torch.no_grad():
        model(source=wav, padding_mask=torch.zeros_like(wav, dtype=torch.bool), mask=False,
              features_only=True)
    want = tap.utterances()
    n50 = conv_num_frames(19200)
    assert n50 % 2 == 1
    for k in want:
        assert got[k][0].shape == want[k][0].shape
        assert torch.equal(got[k][0], want[k][0])
    assert got[6][0].shape[0] == got[1][0].shape[0] == n50


def test_odd_length_decoder_layers_match_encoder_layers_at_the_same_rate():
    """Every 50 Hz layer of one utterance has one frame count, odd length or not, batched
    alone or padded with others."""
    model = tiny_mrhubert()
    for lengths in [(12345,), (8000, 19200, 12345), (19200,)]:
        wav, pad, _ = padded_batch(lengths=lengths)
        with LayerTap(model) as tap, torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
        rates = tap.frame_rates()
        for b in range(len(lengths)):
            by_rate = {}
            for k, utts in tap.utterances().items():
                by_rate.setdefault(rates[k], set()).add(utts[b].shape[0])
            assert all(len(v) == 1 for v in by_rate.values()), (lengths, by_rate)


def test_downsampled_frame_sits_on_the_frame_resample_labels_takes():
    """framing.py's doc and resample_labels agree with the model: the 50 Hz frame that weighs
    most on 25 Hz frame j (largest input gradient) is frame 2j, the one resample_labels takes."""
    model = tiny_mrhubert()
    down = model.downsample_modules[0]
    n = 21
    x = torch.randn(1, n, 64, requires_grad=True)
    y, _, _ = down(x, padding=torch.zeros(1, n, dtype=torch.bool))
    taken = resample_labels(list(range(n)), 50, 25, y.shape[1]).tolist()
    for j in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[0, j].sum(), x, retain_graph=True)
        assert int(g[0].abs().sum(1).argmax()) == taken[j] == 2 * j
