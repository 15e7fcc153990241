"""LayerTap on fairseq HuBERT and wav2vec 2.0 (tiny random-weight models built from configs),
plus the hook contract: handles removed, modes restored, layer selection, unknown models."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from _hooktools import (
    LENGTHS,
    TINY_CONV_STR,
    TOL,
    hook_snapshot,
    hooks_left,
    max_diff_valid,
    padded_batch,
)
from sslvitals.errors import SSLVitalsError
from sslvitals.hooks import LayerTap, conv_num_frames

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed in this environment")
from fairseq.data import Dictionary  # noqa: E402
from fairseq.models.hubert.hubert import HubertConfig, HubertModel  # noqa: E402
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model  # noqa: E402
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig  # noqa: E402

TINY = dict(
    encoder_layers=3,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    conv_feature_layers=TINY_CONV_STR,
    conv_pos=16,
    conv_pos_groups=4,
)


def tiny_hubert(**over) -> HubertModel:
    torch.manual_seed(0)
    cfg = HubertConfig(**{**TINY, "final_dim": 32, "label_rate": 50, **over})
    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(str(i))
    task_cfg = HubertPretrainingConfig(label_rate=50, sample_rate=16000)
    return HubertModel(cfg, task_cfg, [dictionary]).eval()


def tiny_wav2vec2(**over) -> Wav2Vec2Model:
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(**{**TINY, "final_dim": 32, "latent_vars": 8, "latent_groups": 2, **over})
    return Wav2Vec2Model(cfg).eval()


def fairseq_layer0(model, wav, pad):
    """Layer 0 by hand, following fairseq's code: features, projection, masked positions zeroed,
    positional convolution, then the encoder LayerNorm when it precedes the blocks."""
    with torch.no_grad():
        out = model(wav, padding_mask=pad, mask=False, features_only=True)
        fpm = out["padding_mask"]
        feats = model.feature_extractor(wav).transpose(1, 2)
        x = model.layer_norm(feats)
        if fpm is not None:
            x = x[:, : fpm.shape[1]]
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        if fpm is not None:
            x = x.masked_fill(fpm[..., None], 0.0)
        enc = model.encoder
        x = x + enc.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not enc.layer_norm_first:
            x = enc.layer_norm(x)
    return x


def test_hubert_layers_equal_extract_features():
    model = tiny_hubert()
    before = hook_snapshot(model)
    wav, pad, lens = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
    assert tap.architecture == "fairseq.HubertModel"
    assert tap.num_layers == 3 and tap.layer_ids == [0, 1, 2, 3]
    utts = tap.utterances()
    counts = [conv_num_frames(int(n)) for n in lens]
    for k in range(1, 4):
        with torch.no_grad():
            ref, _ = model.extract_features(wav, padding_mask=pad, mask=False, output_layer=k)
        assert max_diff_valid(utts[k], ref, counts) <= TOL
    assert max_diff_valid(utts[0], fairseq_layer0(model, wav, pad), counts) <= TOL
    frames = tap.frames()
    assert frames[2].shape == (sum(counts), 64)
    assert tap.frame_rates() == {0: 50.0, 1: 50.0, 2: 50.0, 3: 50.0}
    assert hooks_left(model, before) == []
    for block in model.encoder.layers:
        assert not block._forward_hooks and not block._forward_hooks_with_kwargs
        assert not block._forward_pre_hooks and not block._forward_pre_hooks_with_kwargs
    assert not model._forward_pre_hooks and not model._forward_pre_hooks_with_kwargs


def test_hubert_frame_counts_without_and_with_input_lengths():
    """extract_features bypasses the model's __call__: without input lengths the counts are
    fairseq's own HuBERT padding mask; set_input_lengths makes them the conv counts."""
    model = tiny_hubert()
    wav, pad, lens = padded_batch()
    with LayerTap(model, layers=[2]) as tap:
        with torch.no_grad():
            _, fpm = model.extract_features(wav, padding_mask=pad, mask=False)
        own = [u.shape[0] for u in tap.utterances()[2]]
        assert own == (~fpm).sum(1).tolist()
        tap.clear()
        tap.set_input_lengths(lens)
        with torch.no_grad():
            model.extract_features(wav, padding_mask=pad, mask=False)
        assert [u.shape[0] for u in tap.utterances()[2]] == [conv_num_frames(int(n)) for n in lens]


def test_single_utterance_without_padding_mask():
    model = tiny_hubert()
    wav = torch.randn(1, 16000)
    with LayerTap(model, layers=[-1]) as tap:
        with torch.no_grad():
            ref, _ = model.extract_features(wav, padding_mask=None, mask=False, output_layer=3)
    (utt,) = tap.utterances()[3]
    assert utt.shape == (49, 64)
    assert float((utt - ref[0]).abs().max()) <= TOL


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_wav2vec2_layers_equal_layer_results(layer_norm_first):
    model = tiny_wav2vec2(layer_norm_first=layer_norm_first, required_seq_len_multiple=2)
    wav, pad, lens = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            out = model(wav, padding_mask=pad, mask=False, features_only=True)
    assert tap.architecture == "fairseq.Wav2Vec2Model"
    utts = tap.utterances()
    counts = [conv_num_frames(int(n)) for n in lens]
    assert counts == (~out["padding_mask"]).sum(1).tolist()
    for k in range(1, 4):
        ref = out["layer_results"][k - 1][0]  # (T, B, C)
        assert max_diff_valid(utts[k], ref, counts, time_first=True) <= TOL
    assert max_diff_valid(utts[0], fairseq_layer0(model, wav, pad), counts) <= TOL
    if layer_norm_first:
        # the model's final output is the encoder LayerNorm of layer L, which layer L is not
        with torch.no_grad():
            normed = [model.encoder.layer_norm(u) for u in utts[3]]
        assert max_diff_valid(normed, out["x"], counts) <= 1e-5
        assert max_diff_valid(utts[3], out["x"], counts) > 1e-3


def test_layer_selection_and_errors():
    model = tiny_hubert()
    assert LayerTap(model, layers=[-1, 0]).layer_ids == [0, 3]
    assert LayerTap(model, layers="1,-2").layer_ids == [1, 2]
    assert LayerTap(model, layers="all").layer_ids == [0, 1, 2, 3]
    # naming the known block list explicitly gives the recognised plan
    assert LayerTap(model, layers="encoder.layers").architecture == "fairseq.HubertModel"
    with pytest.raises(SSLVitalsError, match=r"0\.\.3"):
        LayerTap(model, layers=[4])
    with pytest.raises(SSLVitalsError, match=r"0\.\.3"):
        LayerTap(model, layers=[-5])
    # only the selected layers get hooks, and only they are returned
    wav, pad, _ = padded_batch()
    before = hook_snapshot(model)
    with LayerTap(model, layers=[2]) as tap:
        n_hooks = len({(path, key) for path, _, key in hook_snapshot(model) - before})
        with torch.no_grad():
            model(wav, padding_mask=pad, mask=False, features_only=True)
    assert n_hooks == 2  # block 2 output + the root pre-hook for input lengths
    assert list(tap.utterances()) == [2]


def test_hooks_removed_after_exception_and_modes_restored():
    model = tiny_hubert(encoder_layerdrop=0.5)
    model.train()
    model.feature_extractor.eval()  # a submodule with its own mode must get it back
    before = hook_snapshot(model)
    wav, pad, _ = padded_batch()
    with pytest.raises(RuntimeError, match="boom"):
        with LayerTap(model) as tap:
            assert not model.training and not model.encoder.layers[0].training
            with torch.no_grad():
                model(wav, padding_mask=pad, mask=False, features_only=True)
            raise RuntimeError("boom")
    assert hooks_left(model, before) == []
    assert model.training and model.encoder.training and not model.feature_extractor.training
    # in eval mode inside the block, layer drop does not remove layers
    assert set(tap.utterances()) == {0, 1, 2, 3}
    # an exception raised by the model itself also removes every hook
    with pytest.raises(Exception):
        with LayerTap(model):
            model(torch.randn(2, 100), padding_mask=None, mask=False, features_only=True)
    assert hooks_left(model, before) == []
    assert model.training


def test_train_mode_with_layerdrop_is_refused_without_eval_mode():
    model = tiny_hubert(encoder_layerdrop=0.2).train()
    before = hook_snapshot(model)
    with pytest.raises(SSLVitalsError, match="layer drop"):
        with LayerTap(model, eval_mode=False):
            pass
    assert hooks_left(model, before) == [] and model.training
    # no layer drop: capturing in training mode is allowed and keeps the mode
    model = tiny_hubert(encoder_layerdrop=0.0).train()
    wav, pad, _ = padded_batch()
    with LayerTap(model, eval_mode=False) as tap:
        assert model.training
        model(wav, padding_mask=pad, mask=False, features_only=True)
    assert all(not u.requires_grad for u in tap.frames().values())


def test_captured_tensors_are_detached_and_batches_accumulate():
    model = tiny_hubert()
    wav, pad, lens = padded_batch()
    with LayerTap(model, layers=[1]) as tap:
        model(wav, padding_mask=pad, mask=False, features_only=True)  # with autograd on
        first = tap.frames()[1]
        assert not first.requires_grad and first.device == wav.device
        with torch.no_grad():
            model(wav[:1, : lens[0]], padding_mask=None, mask=False, features_only=True)
        utts = tap.utterances()[1]
        assert len(utts) == 4  # three, then one, in call order
        assert utts[3].shape[0] == conv_num_frames(int(lens[0]))
        tap.clear()
        with pytest.raises(SSLVitalsError, match="no forward pass"):
            tap.frames()


def test_truncated_forward_reports_missing_layers():
    model = tiny_hubert()
    wav, pad, _ = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            model.extract_features(wav, padding_mask=pad, mask=False, output_layer=1)
    with pytest.raises(SSLVitalsError, match=r"layers \[2, 3\]"):
        tap.utterances()


def test_wrapped_model_is_found_in_the_tree():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 4)
            self.w2v_encoder = nn.Module()
            self.w2v_encoder.w2v_model = tiny_hubert()

    wrapper = Wrapper().eval()
    tap = LayerTap(wrapper)
    assert tap.plan.root_path == "w2v_encoder.w2v_model"
    assert tap.plan.blocks[0][0] == "w2v_encoder.w2v_model.encoder.layers.0"


class _TinyTransformer(nn.Module):
    """A model no spec knows: blocks in `stack.blocks`, batch-first."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.stack = nn.Module()
        self.stack.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True) for _ in range(2)
        )

    def forward(self, x):
        h = self.proj(x)
        outs = [h]
        for blk in self.stack.blocks:
            h = blk(h)
            outs.append(h)
        return outs


def test_unknown_model_lists_module_lists_and_path_mode_works():
    model = _TinyTransformer().eval()
    before = hook_snapshot(model)
    with pytest.raises(SSLVitalsError, match=r"'stack\.blocks' \(2 x TransformerEncoderLayer\)"):
        LayerTap(model)
    with pytest.raises(SSLVitalsError, match="module lists in this model"):
        LayerTap(model, layers="stack.nothere")
    x = torch.randn(3, 7, 8)
    with LayerTap(model, layers="stack.blocks") as tap:
        with torch.no_grad():
            ref = model(x)
    assert tap.num_layers == 2
    for k, utts in tap.utterances().items():
        assert max_diff_valid(utts, ref[k], [7, 7, 7]) == 0.0
    with LayerTap(model, layers=[-1], blocks="stack.blocks") as tap:
        with torch.no_grad():
            model(x)
    assert list(tap.frames()) == [2]
    assert hooks_left(model, before) == []


def test_core_import_does_not_pull_toolkits():
    code = (
        "import sys, sslvitals.hooks; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fairseq', 'espnet', 'espnet2', 'transformers', 'torchaudio', 's3prl', 'hydra')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shared_batch_lengths_are_as_expected():
    # guard against editing the shared batch without updating expectations above
    assert [conv_num_frames(n) for n in LENGTHS] == [24, 59, 38]


def test_generic_path_on_a_bare_fairseq_encoder_is_time_first():
    """A bare fairseq TransformerEncoder is not a recognised model; with its block path the
    blocks are read time-first because they receive fairseq's self_attn_padding_mask."""
    from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder

    torch.manual_seed(0)
    holder = nn.Module()
    holder.enc = TransformerEncoder(Wav2Vec2Config(**TINY)).eval()
    x = torch.randn(3, 30, 64)
    pm = torch.arange(30)[None, :] >= torch.tensor([30, 12, 21])[:, None]
    with pytest.raises(SSLVitalsError, match="enc.layers"):
        LayerTap(holder)
    with LayerTap(holder, layers="enc.layers") as tap:
        with torch.no_grad():
            _, results = holder.enc(x, padding_mask=pm)
    assert tap.plan.time_first is None
    assert all(r != r for r in tap.frame_rates().values())  # no front-end: NaN
    utts = tap.utterances()
    for k in (1, 2, 3):
        assert max_diff_valid(utts[k], results[k - 1][0], [30, 12, 21], time_first=True) <= TOL
