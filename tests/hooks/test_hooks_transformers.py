"""LayerTap on transformers' HubertModel, Wav2Vec2Model and WavLMModel (tiny random weights):
captured layers equal ``hidden_states`` on the unpadded frames."""
from __future__ import annotations

import pytest
import torch

from _hooktools import LENGTHS, TOL, hook_snapshot, hooks_left, max_diff_valid, padded_batch
from sslvitals.hooks import LayerTap, conv_num_frames

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

TINY = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)

CASES = [
    ("HubertConfig", "HubertModel", {}),
    ("Wav2Vec2Config", "Wav2Vec2Model", {}),
    ("Wav2Vec2Config", "Wav2Vec2Model",
     {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}),
    ("WavLMConfig", "WavLMModel", {}),
]


def build(config_name: str, model_name: str, extra: dict):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**TINY, **extra)
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("config_name,model_name,extra", CASES,
                         ids=["hubert", "wav2vec2", "wav2vec2-stable", "wavlm"])
def test_layers_equal_hidden_states(config_name, model_name, extra):
    model = build(config_name, model_name, extra)
    wav, pad, lens = padded_batch()
    with torch.no_grad():  # transformers installs its own recording hooks on first use
        model(wav[:1], output_hidden_states=True)
    before = hook_snapshot(model)
    attention_mask = (~pad).long()
    with LayerTap(model) as tap:
        with torch.no_grad():
            out = model(wav, attention_mask=attention_mask, output_hidden_states=True)
    assert hooks_left(model, before) == []
    assert tap.architecture == f"transformers.{model_name}"
    assert tap.num_layers == 3
    hs = out.hidden_states
    assert len(hs) == 4
    counts = [conv_num_frames(int(n)) for n in lens]
    utts = tap.utterances()
    for k in range(3):
        assert max_diff_valid(utts[k], hs[k], counts) <= TOL, k
    assert tap.frame_rates() == {k: 50.0 for k in range(4)}
    if extra.get("do_stable_layer_norm"):
        # layer L is the raw output of the last block; the model's last_hidden_state adds the
        # encoder LayerNorm. (transformers >= 5 returns the raw one as hidden_states[L]; 4.x
        # returned the normalised one.)
        with torch.no_grad():
            normed = [model.encoder.layer_norm(u) for u in utts[3]]
        assert max_diff_valid(normed, out.last_hidden_state, counts) <= 1e-5
        raw_ok = max_diff_valid(utts[3], hs[3], counts) <= TOL
        norm_ok = max_diff_valid(normed, hs[3], counts) <= 1e-5
        assert raw_ok or norm_ok
    else:
        assert max_diff_valid(utts[3], hs[3], counts) <= TOL


def test_without_attention_mask_every_frame_is_valid():
    model = build("HubertConfig", "HubertModel", {})
    wav, _, _ = padded_batch()
    with LayerTap(model, layers=[1]) as tap:
        with torch.no_grad():
            out = model(wav, output_hidden_states=True)
    utts = tap.utterances()[1]
    t = conv_num_frames(max(LENGTHS))
    assert [u.shape[0] for u in utts] == [t] * 3
    assert max_diff_valid(utts, out.hidden_states[1], [t] * 3) <= TOL


def test_layerdrop_in_training_mode_is_neutralised():
    """transformers' default layerdrop (0.1) would skip blocks in training mode; LayerTap
    captures in eval mode and gives back the training mode."""
    model = build("Wav2Vec2Config", "Wav2Vec2Model", {"layerdrop": 0.9}).train()
    wav, pad, lens = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            ref = model(wav, attention_mask=(~pad).long(), output_hidden_states=True)
    assert model.training
    counts = [conv_num_frames(int(n)) for n in lens]
    for k, utts in tap.utterances().items():
        assert max_diff_valid(utts, ref.hidden_states[k], counts) <= TOL
