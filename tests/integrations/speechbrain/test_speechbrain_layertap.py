"""LayerTap on SpeechBrain's BEST-RQ encoder and wav2vec 2.0 model (built from SpeechBrain's own
lobes, random weights): layer count and numbering, frame rates, and frames equal to an
independent capture that calls the encoder's blocks by hand. Also: the recipe's module
collections are recognised, the batching rule makes the numbers independent of the batch
size, and neither the core nor this package's ``__init__`` imports SpeechBrain.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("speechbrain")

from speechbrain.lobes.features import Fbank  # noqa: E402
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd  # noqa: E402
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoder  # noqa: E402
from speechbrain.lobes.models.transformer.TransformerASR import (  # noqa: E402
    EncoderWrapper,
    TransformerASR,
)
from speechbrain.lobes.models.wav2vec import EncoderWrapper as W2VEncoderWrapper  # noqa: E402
from speechbrain.lobes.models.wav2vec import W2VLatentExtractor  # noqa: E402
from speechbrain.processing.features import InputNormalization  # noqa: E402

from sslvitals.batching import choose_policy  # noqa: E402
from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.hooks import LayerTap  # noqa: E402
from sslvitals.integrations.speechbrain.model import (  # noqa: E402
    SpeechBrainBestRQ,
    SpeechBrainWav2Vec2,
    model_from_modules,
    speechbrain_forward,
)
from sslvitals.monitor import VitalsMonitor  # noqa: E402
from sslvitals.probe import ProbeBatch  # noqa: E402

N_MELS = 20


def bestrq_parts(encoder_module: str = "conformer", layers: int = 3) -> dict[str, nn.Module]:
    """A tiny BEST-RQ as the recipe builds it (Fbank, sentence norm, 2-D CNN, TransformerASR)."""
    torch.manual_seed(0)
    attention = "RelPosMHAXL" if encoder_module == "conformer" else "regularMHA"
    transformer = TransformerASR(
        input_size=N_MELS, tgt_vocab=16, d_model=32, nhead=2, num_encoder_layers=layers,
        num_decoder_layers=0, d_ffn=64, dropout=0.1, activation=nn.GELU,
        conformer_activation=nn.GELU, encoder_module=encoder_module, attention_type=attention,
        normalize_before=True, causal=False)
    return {
        "compute_features": Fbank(sample_rate=16000, n_fft=400, n_mels=N_MELS),
        "normalize": InputNormalization(norm_type="sentence"),
        "CNN": ConvolutionFrontEnd(input_shape=(4, 10, N_MELS), num_blocks=2,
                                   num_layers_per_block=1, out_channels=(8, 4),
                                   kernel_sizes=(3, 3), strides=(2, 2),
                                   residuals=(False, False)),
        "wrapper": EncoderWrapper(transformer),
    }


def bestrq(encoder_module: str = "conformer") -> SpeechBrainBestRQ:
    p = bestrq_parts(encoder_module)
    return SpeechBrainBestRQ(p["compute_features"], p["normalize"], p["CNN"], p["wrapper"]).eval()


def wav2vec2() -> SpeechBrainWav2Vec2:
    torch.manual_seed(0)
    extractor = W2VLatentExtractor(out_channels=[16] * 7)
    encoder = TransformerEncoder(num_layers=3, nhead=2, d_ffn=64, d_model=32,
                                 normalize_before=True, activation=nn.GELU)
    return SpeechBrainWav2Vec2(extractor, W2VEncoderWrapper(16, 32, encoder)).eval()


def waves(lengths=(16000, 12345, 20007), seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=g) for n in lengths]


def by_hand_bestrq(model: SpeechBrainBestRQ, wav: torch.Tensor) -> list[torch.Tensor]:
    """Layer 0..L of one utterance, calling the encoder's blocks directly (no hooks)."""
    transformer = model.encoder.transformer
    with torch.no_grad():
        feats = model.normalize(model.compute_features(wav[None]), torch.ones(1))
        src = model.CNN(feats)
        src = src.reshape(src.shape[0], src.shape[1], -1)
        x = transformer.custom_src_module(src)
        pos = None
        if transformer.attention_type == "RelPosMHAXL":
            pos = transformer.positional_encoding(x)
        else:
            x = x + transformer.positional_encoding(x)
        out = [x[0]]
        for block in transformer.encoder.layers:
            x, _ = block(x, pos_embs=pos)
            out.append(x[0])
        final = model(wav[None])[0]
    # the encoder's final norm is applied after the last block, not part of layer L
    assert torch.allclose(final, transformer.encoder.norm(out[-1][None])[0], atol=1e-5)
    return out


@pytest.mark.parametrize("encoder_module", ["conformer", "transformer"])
def test_bestrq_layers_equal_blocks_called_by_hand(encoder_module):
    model = bestrq(encoder_module)
    wavs = waves()
    with LayerTap(model) as tap:
        for w in wavs:
            model(w[None])
        got = tap.utterances()
    assert tap.num_layers == 3 and tap.layer_ids == [0, 1, 2, 3]
    assert tap.plan.family == "speechbrain-bestrq"
    assert "encoder.layers[0] input" in tap.plan.numbering and "norm is not applied" in tap.plan.numbering
    assert ("absolute positional encoding" in tap.plan.numbering) == (encoder_module == "transformer")
    # 10 ms filterbank hop x two stride-2 convolutions = 40 ms frames
    assert tap.frame_rates() == {layer: 25.0 for layer in range(4)}
    for i, w in enumerate(wavs):
        ref = by_hand_bestrq(model, w)
        # the CNN gives ceil(filterbank frames / 4) frames, filterbanks S // 160 + 1
        assert ref[0].shape[0] == math.ceil((w.numel() // 160 + 1) / 4)
        for layer in range(4):
            torch.testing.assert_close(got[layer][i], ref[layer], rtol=0, atol=1e-6)


def test_bestrq_recipe_module_collections_are_recognised():
    parts = bestrq_parts()
    # the recipe's checkpointed 'model' (ModuleList [CNN, wrapper]) and its 'modules' dict
    for container in (nn.ModuleList([parts["CNN"], parts["wrapper"]]),
                      nn.ModuleDict({k: v for k, v in parts.items() if k != "compute_features"})):
        tap = LayerTap(container)
        assert tap.plan.family == "speechbrain-bestrq" and tap.num_layers == 3
        assert tap.frame_rates()[3] == 25.0  # SpeechBrain's default 10 ms hop without an Fbank
    # the encoder alone: same blocks, frame rate unknown
    tap = LayerTap(parts["wrapper"])
    assert tap.plan.family == "speechbrain-encoder" and tap.num_layers == 3
    assert math.isnan(tap.frame_rates()[1])
    with pytest.raises(SSLVitalsError, match="out of range"):
        LayerTap(bestrq(), layers=[4])


def test_model_from_recipe_modules_and_errors():
    parts = bestrq_parts()
    modules = {"CNN": parts["CNN"], "wrapper": parts["wrapper"], "normalize": parts["normalize"],
               "linear": nn.Linear(32, 16)}
    model, kind = model_from_modules(modules, {"compute_features": parts["compute_features"]})
    assert kind == "bestrq" and isinstance(model, SpeechBrainBestRQ)
    assert model.CNN is parts["CNN"] and model.encoder is parts["wrapper"]  # the trained objects
    with pytest.raises(SSLVitalsError, match="Fbank"):
        model_from_modules(modules, {})
    with pytest.raises(SSLVitalsError, match="linear \\(Linear\\)"):
        model_from_modules({"linear": nn.Linear(3, 3)})


def test_wav2vec2_layers_equal_blocks_called_by_hand():
    model = wav2vec2()
    wavs = waves()
    with LayerTap(model) as tap:
        for w in wavs:
            model(w[None])
        got = tap.utterances()
    assert tap.plan.family == "speechbrain-wav2vec2"
    assert tap.num_layers == 3 and tap.layer_ids == [0, 1, 2, 3]
    # SpeechBrain's default extractor: kernels 11,3,..., strides 5,2,2,2,2,2,2 -> 320 samples
    assert tap.frame_rates() == {layer: 50.0 for layer in range(4)}
    for i, w in enumerate(wavs):
        with torch.no_grad():
            latents = model.latent_extractor(w[None], normalize_signal=True)
            wrapper = model.latent_encoder
            x = wrapper.input_projector(latents)
            x = x + wrapper.positional_encoding(x)
            ref = [x[0]]
            for block in wrapper.latent_encoder.layers:
                x, _ = block(x)
                ref.append(x[0])
        assert ref[0].shape[0] == model.latent_extractor.get_output_lengths(
            torch.tensor(w.numel())).item()
        assert int(tap.plan.frames_from_samples(torch.tensor([w.numel()]), 2)[0]) == ref[0].shape[0]
        for layer in range(4):
            torch.testing.assert_close(got[layer][i], ref[layer], rtol=0, atol=1e-6)
    assert model_from_modules({"latent_extractor": model.latent_extractor,
                               "latent_encoder": model.latent_encoder,
                               "feat_proj": nn.Linear(32, 8)})[1] == "wav2vec2"


def _batches(wavs: list[torch.Tensor], per_batch: int):
    for start in range(0, len(wavs), per_batch):
        chunk = wavs[start:start + per_batch]
        lengths = torch.tensor([w.numel() for w in chunk])
        wav = torch.zeros(len(chunk), int(lengths.max()))
        for j, w in enumerate(chunk):
            wav[j, :w.numel()] = w
        yield ProbeBatch(wav, lengths, [f"u{start + j}" for j in range(len(chunk))],
                         list(range(start, start + len(chunk))), None)


@pytest.mark.parametrize("build", [bestrq, wav2vec2], ids=["bestrq", "wav2vec2"])
def test_numbers_do_not_depend_on_batching(build):
    """Padded batches of 4 and one utterance per batch give the same numbers: both models run
    one utterance per forward pass (conformer convolutions; BEST-RQ's and wav2vec 2.0's
    front-ends normalise over time), whatever the caller's batches."""
    model = build()
    assert not choose_policy(model, speechbrain_forward).padded
    wavs = waves(lengths=tuple(int(n) for n in np.linspace(9000, 30000, 8)), seed=1)
    cfg = VitalsConfig(enabled=True, k=4, reservoir_size=4096, silhouette_sample=0,
                       metrics="label_free", backend="torch")
    one = VitalsMonitor(cfg).measure(model, speechbrain_forward, list(_batches(wavs, 1)))
    four = VitalsMonitor(cfg).measure(model, speechbrain_forward, list(_batches(wavs, 4)))
    assert set(one) == set(four)
    for key, value in one.items():
        if key != "vitals/seconds":
            assert math.isfinite(value), key
            assert four[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_core_and_package_do_not_import_speechbrain():
    code = ("import sys, sslvitals.hooks, sslvitals.monitor, sslvitals.loaded, "
            "sslvitals.offline.loaders, sslvitals.integrations.speechbrain, "
            "sslvitals.integrations.speechbrain.options; "
            "assert 'speechbrain' not in sys.modules, sorted(m for m in sys.modules "
            "if m.startswith('speechbrain')); "
            "import sslvitals.offline.loaders as L, sslvitals.loaded as D; "
            "assert L.LoadedModel is D.LoadedModel and L.normalise_waveforms is D.normalise_waveforms")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, sslvitals.loaded; assert 'sslvitals.offline' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
