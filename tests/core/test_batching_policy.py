"""One batching rule for every architecture (``sslvitals.batching``), proven per architecture.

For every model sslvitals recognises (tiny random-weight models built from their configs),
``VitalsMonitor.measure`` with large padded batches (every probe utterance, all of different
lengths, zero-padded into one batch) must give the same value for every metric, within 1e-5
relative, as the same measurement fed one utterance per batch. The test also pins which
models get padded batches, so the padded cases really run padded, and, for the models the
rule splits because padding changes their features, shows that bypassing the rule changes
the numbers (the comparison can fail). One 2-process gloo run (ESPnet's default
``torchaudio_hubert``, group-norm front-end) must equal one process.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from sslvitals import batching
from sslvitals.config import VitalsConfig
from sslvitals.keys import TIME_KEY
from sslvitals.monitor import VitalsMonitor
from sslvitals.probe import ProbeSet, frame_count

pytestmark = pytest.mark.usefixtures("one_thread_blas")

#: 32-channel version of the HuBERT / wav2vec 2.0 convolutions (same kernels and strides).
CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
CONV_STR = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
#: Probe utterance durations (s): all different, so a padded batch has real padding.
SECONDS = (0.8, 1.05, 1.3, 1.55, 1.9, 2.35, 2.8)
REL = 1e-5


# --------------------------------------------------------------------------- the models
# Each builder returns (model, forward_fn) with seeded random weights, in eval mode.

def fairseq_hubert(mode: str) -> tuple[torch.nn.Module, Callable]:
    pytest.importorskip("fairseq")
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from sslvitals.integrations.fairseq.forward import make_forward_fn

    torch.manual_seed(0)
    d = Dictionary()
    for i in range(10):
        d.add_symbol(str(i))
    cfg = HubertConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                       encoder_attention_heads=2, conv_feature_layers=CONV_STR, conv_pos=16,
                       conv_pos_groups=4, final_dim=16, label_rate=50, extractor_mode=mode,
                       layer_norm_first=mode == "layer_norm")
    model = HubertModel(cfg, HubertPretrainingConfig(label_rate=50), [d])
    return model.eval(), make_forward_fn(normalize=mode == "layer_norm")


def fairseq_wav2vec2(mode: str, **extra: Any) -> tuple[torch.nn.Module, Callable]:
    pytest.importorskip("fairseq")
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    from sslvitals.integrations.fairseq.forward import make_forward_fn

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                         encoder_attention_heads=2, conv_feature_layers=CONV_STR, conv_pos=16,
                         conv_pos_groups=4, final_dim=16, latent_vars=8, latent_groups=2,
                         extractor_mode=mode, layer_norm_first=mode == "layer_norm", **extra)
    return Wav2Vec2Model(cfg).eval(), make_forward_fn(normalize=mode == "layer_norm")


def mrhubert() -> tuple[torch.nn.Module, Callable]:
    hm = pytest.importorskip("s3prl.upstream.multires_hubert.hubert_model")
    from sslvitals.integrations.fairseq.forward import make_forward_fn

    torch.manual_seed(0)
    cfg = hm.MultiresHubertConfig(label_rate=50, label_rate_ratios=[1, 2], encoder_layers=1,
                                  encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                  encoder_attention_heads=2, conv_feature_layers=CONV_STR,
                                  conv_pos=16, conv_pos_groups=4, final_dim=16)
    task = hm.MultiresHubertPretrainingConfig(label_rate=50)
    model = hm.MultiresHubertModel(cfg, task, [list(range(10))] * 2)
    return model.eval(), make_forward_fn(normalize=False)


def espnet_torchaudio(mode: str) -> tuple[torch.nn.Module, Callable]:
    pytest.importorskip("espnet2")
    pytest.importorskip("torchaudio.models")
    from espnet2.asr.encoder.hubert_encoder import TorchAudioHuBERTPretrainEncoder
    from espnet2.hubert.espnet_model import TorchAudioHubertPretrainModel

    from sslvitals.integrations.espnet.forward import espnet_forward

    torch.manual_seed(0)
    enc = TorchAudioHuBERTPretrainEncoder(
        input_size=1, extractor_mode=mode, extractor_conv_layer_config=[list(c) for c in CONV],
        encoder_embed_dim=32, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=2, encoder_ff_interm_features=64,
        encoder_layer_norm_first=mode == "layer_norm", encoder_layer_drop=0.0,
        num_classes=10, final_dim=16)
    model = TorchAudioHubertPretrainModel(vocab_size=10, token_list=[str(i) for i in range(10)],
                                          frontend=None, specaug=None, normalize=None,
                                          preencoder=None, encoder=enc)
    return model.eval(), espnet_forward


def espnet_fairseq_hubert() -> tuple[torch.nn.Module, Callable]:
    pytest.importorskip("espnet2")
    pytest.importorskip("fairseq")
    from espnet2.asr.encoder.hubert_encoder import FairseqHubertPretrainEncoder
    from espnet2.hubert.espnet_model import HubertPretrainModel

    from sslvitals.integrations.espnet.forward import espnet_forward

    torch.manual_seed(0)
    enc = FairseqHubertPretrainEncoder(
        output_size=32, linear_units=64, attention_heads=2, num_blocks=2,
        hubert_dict="no-such-dict.txt", label_rate=50, conv_feature_layers=CONV_STR,
        conv_pos=16, conv_pos_groups=4, encoder_layerdrop=0.0)
    model = HubertPretrainModel(vocab_size=10, token_list=[str(i) for i in range(10)],
                                frontend=None, specaug=None, normalize=None, preencoder=None,
                                encoder=enc)
    return model.eval(), espnet_forward


def espnet_ssl(norm_mode: str) -> tuple[torch.nn.Module, Callable]:
    pytest.importorskip("espnet2")
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.asr.frontend.cnn import CNNFrontend
    from espnet2.asr.preencoder.linear import LinearProjection
    from espnet2.ssl.espnet_model import ESPnetSSLModel
    from espnet2.ssl.loss.hubert import HuBERTLoss
    from espnet2.ssl.utils.mask import Masking

    from sslvitals.integrations.espnet.forward import espnet_forward

    torch.manual_seed(0)
    frontend = CNNFrontend(norm_mode=norm_mode, conv_mode="standard", bias=False, shapes=CONV)
    pre = LinearProjection(input_size=frontend.output_size(), output_size=32)
    encoder = TransformerEncoder(input_size=32, output_size=32, attention_heads=2,
                                 linear_units=64, num_blocks=2, input_layer="wav2vec",
                                 normalize_before=True)
    loss = HuBERTLoss(encoder_output_size=32, num_classes=10, final_dim=16)
    model = ESPnetSSLModel(
        frontend=frontend, specaug=None, normalize=None, preencoder=pre, encoder=encoder,
        losses=[loss], util_attributes={"mask"}, required_inputs=set(loss.required_inputs),
        util_modules=torch.nn.ModuleDict({"mask": Masking(encoder_embed_dim=32)}),
        token_list=[str(i) for i in range(10)])
    return model.eval(), espnet_forward


def hf(model_name: str, norm: str) -> tuple[torch.nn.Module, Callable]:
    transformers = pytest.importorskip("transformers")
    from sslvitals.integrations.transformers.checkpoint import transformers_forward

    config = getattr(transformers, model_name.replace("Model", "Config"))(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(0)
    return getattr(transformers, model_name)(config).eval(), transformers_forward


#: name -> (builder, padded batches expected, bypassing the rule must change the numbers)
CASES: dict[str, tuple[Callable[[], tuple[torch.nn.Module, Callable]], bool, bool]] = {
    "fairseq-hubert-default": (lambda: fairseq_hubert("default"), False, True),
    "fairseq-hubert-layer_norm": (lambda: fairseq_hubert("layer_norm"), False, True),
    "fairseq-wav2vec2-default": (lambda: fairseq_wav2vec2("default"), False, True),
    "fairseq-wav2vec2-layer_norm": (lambda: fairseq_wav2vec2("layer_norm"), True, False),
    "fairseq-wav2vec2-conformer-layer_norm": (
        lambda: fairseq_wav2vec2("layer_norm", layer_type="conformer",
                                 depthwise_conv_kernel_size=7), False, True),
    "s3prl-mrhubert": (mrhubert, False, True),
    "espnet-torchaudio_hubert-group_norm": (lambda: espnet_torchaudio("group_norm"), False, True),
    "espnet-torchaudio_hubert-layer_norm": (lambda: espnet_torchaudio("layer_norm"), True, False),
    "espnet-hubert_pretrain": (espnet_fairseq_hubert, False, True),
    "espnet-ssl-group_norm": (lambda: espnet_ssl("group_norm"), False, True),
    "espnet-ssl-layer_norm": (lambda: espnet_ssl("layer_norm"), False, False),
    "transformers-hubert-group": (lambda: hf("HubertModel", "group"), False, True),
    "transformers-hubert-layer": (lambda: hf("HubertModel", "layer"), True, False),
    "transformers-wav2vec2-group": (lambda: hf("Wav2Vec2Model", "group"), False, True),
    "transformers-wav2vec2-layer": (lambda: hf("Wav2Vec2Model", "layer"), True, False),
    "transformers-wavlm-group": (lambda: hf("WavLMModel", "group"), False, True),
    "transformers-wavlm-layer": (lambda: hf("WavLMModel", "layer"), True, False),
}


# --------------------------------------------------------------------------- probe, config
@pytest.fixture(scope="module")
def probe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded noise-shaped tones of different lengths and loudness, with 50 Hz frame labels."""
    root = tmp_path_factory.mktemp("batching_probe")
    (root / "wav").mkdir()
    rng = np.random.default_rng(7)
    lines, phn = [str(root / "wav")], []
    for i, sec in enumerate(SECONDS):
        n = int(sec * 16000)
        t = np.arange(n) / 16000
        f0 = 120 + 35 * i
        x = (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2.7 * f0 * t)) * (0.1 + 0.08 * i)
        x += (0.02 + 0.01 * i) * rng.standard_normal(n)
        sf.write(root / "wav" / f"u{i}.wav", x.astype(np.float32), 16000)
        lines.append(f"u{i}.wav\t{n}")
        phn.append(" ".join(str((j // 6 + i) % 5) for j in range(frame_count(n))))
    (root / "probe.tsv").write_text("\n".join(lines) + "\n")
    (root / "probe.phn").write_text("\n".join(phn) + "\n")
    return root / "probe.tsv"


def config(**kw: Any) -> VitalsConfig:
    base = dict(enabled=True, k=4, reservoir_size=4000, silhouette_sample=0, kmeans_iters=10,
                metrics="default", layers="all", seed=3, backend="torch")
    base.update(kw)
    return VitalsConfig(**base)


def measure(model: torch.nn.Module, fwd: Callable, probe: ProbeSet, batch_seconds: float
            ) -> dict[str, float]:
    return VitalsMonitor(config()).measure(model, fwd, probe.batches(batch_seconds))


def differences(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Relative difference per metric key (0 when both are NaN, inf when only one is)."""
    assert set(a) == set(b)
    out = {}
    for key in sorted(a):
        if key == TIME_KEY:
            continue
        x, y = a[key], b[key]
        if math.isnan(x) or math.isnan(y):
            out[key] = 0.0 if math.isnan(x) and math.isnan(y) else math.inf
        else:
            out[key] = abs(x - y) / max(abs(x), abs(y), 1e-12)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def one_at_a_time(probe: ProbeSet) -> Any:
    """Every utterance in its own, unpadded batch."""
    for batch in probe.batches(1e-3):
        assert batch.wav.shape[0] == 1
        yield batch


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", list(CASES))
def test_padded_batches_measure_what_one_at_a_time_measures(name: str, probe_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    build, padded, bypass_differs = CASES[name]
    model, fwd = build()
    probe = ProbeSet.from_path(probe_path, max_seconds=None)
    big = next(probe.batches(1000.0))
    assert big.wav.shape[0] == len(SECONDS)  # one batch, really padded
    policy = batching.choose_policy(model, fwd)
    assert policy.padded is padded, policy.describe()

    monkeypatch.setattr(batching, "_logged", set())
    with caplog.at_level(logging.INFO, logger="sslvitals.batching"):
        default = measure(model, fwd, probe, 1000.0)
    said = [r.getMessage() for r in caplog.records if "probe batching for" in r.getMessage()]
    assert said == [f"sslvitals: probe batching for {policy.describe()}"]  # once, with the reason
    single = VitalsMonitor(config()).measure(model, fwd, one_at_a_time(probe))
    assert len(default) > 40  # 3 layers x the default metrics, labels included
    assert sum(math.isfinite(v) for v in default.values()) > 30
    diff = differences(default, single)
    worst = max(diff, key=diff.get)
    assert diff[worst] <= REL, (worst, default[worst], single[worst])

    if bypass_differs:
        # the rule is what makes them equal: padded batches without it differ
        forced = batching.BatchingPolicy(True, policy.architecture, "forced by the test")
        monkeypatch.setattr(batching, "choose_policy", lambda m, f=None: forced)
        bypassed = measure(model, fwd, probe, 1000.0)
        assert max(differences(bypassed, single).values()) > 1e-4


def _worker(rank: int, world: int, init: str, probe_path: str, out_path: str) -> None:
    """One gloo process: its shard of the probe in one large padded batch, default policy."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, fwd = espnet_torchaudio("group_norm")
        shard = ProbeSet.from_path(probe_path, max_seconds=None).shard(rank, world)
        assert next(shard.batches(1000.0)).wav.shape[0] > 1  # padded on this rank too
        torch.save(measure(model, fwd, shard, 1000.0), f"{out_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process_espnet_group_norm(probe_path: Path,
                                                                tmp_path: Path) -> None:
    model, fwd = espnet_torchaudio("group_norm")
    probe = ProbeSet.from_path(probe_path, max_seconds=None)
    single = VitalsMonitor(config()).measure(model, fwd, one_at_a_time(probe))
    torch.multiprocessing.spawn(_worker, args=(2, f"file://{tmp_path}/init", str(probe_path),
                                               str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    assert {k: v for k, v in r0.items() if k != TIME_KEY} == {
        k: v for k, v in r1.items() if k != TIME_KEY}  # every rank reports the same numbers
    diff = differences(r0, single)
    worst = max(diff, key=diff.get)
    assert diff[worst] <= REL, (worst, r0[worst], single[worst])


def test_unknown_models_and_unmarked_forward_functions_are_split() -> None:
    from sslvitals.probe import ProbeBatch

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    policy = batching.choose_policy(Plain(), batching.passes_padding(lambda m, b: None))
    assert not policy.padded and "not a recognised architecture" in policy.reason
    model, fwd = hf("Wav2Vec2Model", "layer")
    assert batching.choose_policy(model, fwd).padded
    unmarked = batching.choose_policy(model, lambda m, b: fwd(m, b))
    assert not unmarked.padded and "passes_padding" in unmarked.reason
    if _has("espnet2"):
        from espnet2.layers.utterance_mvn import UtteranceMVN

        model, fwd = espnet_torchaudio("layer_norm")
        assert batching.choose_policy(model, fwd).padded
        model.normalize = UtteranceMVN()  # a stage before the encoder that is not vetted
        policy = batching.choose_policy(model, fwd)
        assert not policy.padded and "normalize UtteranceMVN" in policy.reason
    batch = ProbeBatch(wav=torch.ones(2, 5), lengths=torch.tensor([5, 3]), ids=["a", "b"],
                       index=[4, 9], labels=None)
    parts = list(unmarked.apply([batch]))
    assert [p.wav.shape for p in parts] == [(1, 5), (1, 3)] and [p.index for p in parts] == [[4], [9]]
