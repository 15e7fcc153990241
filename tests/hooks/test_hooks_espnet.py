"""LayerTap on ESPnet's HuBERT encoders (torchaudio-based and fairseq-based) and on the model of
ESPnet's SSL task (``espnet2/tasks/ssl.py``: CNN front-end, linear pre-encoder, transformer
encoder), tiny random weights, against the encoders' own per-layer outputs."""
from __future__ import annotations

import pytest
import torch

from _hooktools import TINY_CONV, TOL, hook_snapshot, hooks_left, max_diff_valid, padded_batch
from sslvitals.hooks import LayerTap, conv_num_frames

pytest.importorskip("espnet2", reason="espnet is not installed in this environment")


def test_torchaudio_hubert_encoder_equals_extract_features():
    pytest.importorskip("torchaudio.models", reason="torchaudio's Python API is not importable")
    from espnet2.asr.encoder.hubert_encoder import TorchAudioHuBERTPretrainEncoder

    torch.manual_seed(0)
    enc = TorchAudioHuBERTPretrainEncoder(
        input_size=1,
        extractor_conv_layer_config=[list(c) for c in TINY_CONV],
        encoder_embed_dim=64,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=3,
        encoder_num_heads=4,
        encoder_ff_interm_features=128,
        num_classes=10,
        final_dim=32,
    ).train()  # its default layer drop is 0.05: LayerTap must capture in eval mode
    before = hook_snapshot(enc)
    wav, _, lens = padded_batch()
    w2v = enc.hubert_pretrain_model.wav2vec2
    with LayerTap(enc) as tap:
        with torch.no_grad():
            ref, ref_lens = w2v.extract_features(wav, lens)
    assert enc.training and hooks_left(enc, before) == []
    assert tap.architecture == "torchaudio.Wav2Vec2Model"
    assert tap.plan.root_path == "hubert_pretrain_model.wav2vec2"
    counts = [conv_num_frames(int(n)) for n in lens]
    assert ref_lens.tolist() == counts
    utts = tap.utterances()
    for k in range(1, 4):
        assert max_diff_valid(utts[k], ref[k - 1], counts) <= TOL
    # layer 0 by hand: feature projection, padded frames zeroed, positional conv, LayerNorm
    with torch.no_grad():
        enc.eval()
        feats, flen = w2v.feature_extractor(wav, lens)
        x, _ = w2v.encoder._preprocess(feats, flen)
        x0 = w2v.encoder.transformer._preprocess(x)
    assert max_diff_valid(utts[0], x0, counts) <= TOL
    assert tap.frame_rates() == {k: 50.0 for k in range(4)}


def test_fairseq_hubert_pretrain_encoder_is_read_as_fairseq():
    pytest.importorskip("fairseq", reason="fairseq is not installed")
    from espnet2.asr.encoder.hubert_encoder import FairseqHubertPretrainEncoder

    torch.manual_seed(0)
    enc = FairseqHubertPretrainEncoder(
        output_size=64,
        linear_units=128,
        attention_heads=4,
        num_blocks=2,
        hubert_dict="no-such-dict.txt",  # ESPnet then uses a one-symbol dictionary
        label_rate=50,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        conv_pos=16,
        conv_pos_groups=4,
    ).eval()
    wav, pad, lens = padded_batch()
    with LayerTap(enc) as tap:
        with torch.no_grad():
            enc.encoder(wav, padding_mask=pad, mask=False, features_only=True)
    assert tap.architecture == "fairseq.HubertModel" and tap.plan.root_path == "encoder"
    counts = [conv_num_frames(int(n)) for n in lens]
    utts = tap.utterances()
    for k in (1, 2):
        with torch.no_grad():
            ref, _ = enc.encoder.extract_features(wav, padding_mask=pad, mask=False, output_layer=k)
        assert max_diff_valid(utts[k], ref, counts) <= TOL


def build_ssl_model():
    """The model SSLTask.build_model assembles for frontend=wav2vec_cnn, preencoder=linear,
    encoder=transformer (input_layer=wav2vec) and the HuBERT loss, built from its classes
    directly (importing espnet2.tasks.ssl costs ~10 s for its text front-ends)."""
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.asr.frontend.cnn import CNNFrontend
    from espnet2.asr.preencoder.linear import LinearProjection
    from espnet2.ssl.espnet_model import ESPnetSSLModel
    from espnet2.ssl.loss.hubert import HuBERTLoss
    from espnet2.ssl.utils.mask import Masking

    torch.manual_seed(0)
    frontend = CNNFrontend(norm_mode="group_norm", conv_mode="standard", bias=False,
                           shapes=[tuple(c) for c in TINY_CONV])
    pre = LinearProjection(input_size=frontend.output_size(), output_size=64)
    encoder = TransformerEncoder(input_size=64, output_size=64, attention_heads=4,
                                 linear_units=128, num_blocks=3, input_layer="wav2vec",
                                 normalize_before=True, layer_drop_rate=0.1)
    loss = HuBERTLoss(encoder_output_size=64, num_classes=10, final_dim=32)
    utils = torch.nn.ModuleDict({"mask": Masking(encoder_embed_dim=64)})
    return ESPnetSSLModel(
        frontend=frontend, specaug=None, normalize=None, preencoder=pre, encoder=encoder,
        losses=[loss], util_attributes={"mask"}, required_inputs=set(loss.required_inputs),
        util_modules=utils, token_list=[str(i) for i in range(10)],
    ).eval()


def test_espnet_ssl_model_equals_encoder_hidden_states():
    model = build_ssl_model()
    before = hook_snapshot(model)
    wav, _, lens = padded_batch()
    with LayerTap(model) as tap:
        with torch.no_grad():
            final, hidden, olens = model.inference_encode(wav, lens)
    assert hooks_left(model, before) == []
    assert tap.architecture == "espnet2.ESPnetSSLModel"
    assert tap.num_layers == 3
    counts = [conv_num_frames(int(n)) for n in lens]
    assert olens.tolist() == counts
    utts = tap.utterances()
    for k in range(1, 4):
        assert max_diff_valid(utts[k], hidden[k - 1], counts) <= TOL
    # the encoder's final output is after_norm(layer L), which layer L is not
    with torch.no_grad():
        normed = [model.encoder.after_norm(u) for u in utts[3]]
    assert max_diff_valid(normed, final, counts) <= 1e-5
    # layer 0 = encoder.embed output (sinusoidal positions + LayerNorm) of the pre-encoded input
    with torch.no_grad():
        feats, flen = model.frontend(wav, lens)
        feats, flen = model.preencoder(feats, flen)
        x0 = model.encoder.embed(feats)
    assert max_diff_valid(utts[0], x0, counts) <= TOL
    assert tap.frame_rates() == {k: 50.0 for k in range(4)}


def test_espnet_ssl_model_forward_with_loss_is_captured():
    """The training-style forward (masking + HuBERT loss) goes through the same blocks."""
    model = build_ssl_model()
    wav, _, lens = padded_batch()
    counts = [conv_num_frames(int(n)) for n in lens]
    text = torch.randint(0, 10, (3, max(counts)))
    with LayerTap(model, layers=[-1]) as tap:
        with torch.no_grad():
            model(wav, lens, text, torch.tensor(counts))
    assert [u.shape[0] for u in tap.utterances()[3]] == counts


@pytest.mark.parametrize("kind", ["conformer", "e_branchformer"])
def test_bare_espnet_encoders_with_relative_positions(kind):
    """Conformer / E-Branchformer blocks take and return (x, pos_emb) tuples; a bare encoder has
    no waveform front-end, so its frame rate is unknown (NaN)."""
    if kind == "conformer":
        from espnet2.asr.encoder.conformer_encoder import ConformerEncoder as cls
        extra = dict(cnn_module_kernel=7)
    else:
        from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder as cls
        extra = dict(cgmlp_linear_units=128, cgmlp_conv_kernel=7)
    torch.manual_seed(0)
    enc = cls(input_size=64, output_size=64, attention_heads=4, linear_units=128, num_blocks=2,
              input_layer="linear", **extra).eval()
    x, lens = torch.randn(3, 40, 64), torch.tensor([20, 40, 33])
    with LayerTap(enc) as tap:
        with torch.no_grad():
            (_, hidden), olens, _ = enc(x, lens, return_all_hs=True)
    utts = tap.utterances()
    for k in (1, 2):
        assert max_diff_valid(utts[k], hidden[k - 1], olens.tolist()) <= TOL
    assert [u.shape[0] for u in utts[0]] == [20, 40, 33]
    assert all(r != r for r in tap.frame_rates().values())  # NaN
