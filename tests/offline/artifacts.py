"""Tiny, seeded artefacts for the offline tests and the committed examples.

* a probe: seeded tone + noise wav files at 16 kHz, a fairseq ``.tsv`` manifest and ``.phn``
  frame labels ((num_samples - 400) // 320 + 1 ids per utterance, one line per utterance);
* fairseq checkpoints (HuBERT, wav2vec 2.0) in fairseq's on-disk layout, built from the
  toolkit's own config dataclasses with random weights;
* an ESPnet HuBERT experiment directory (config.yaml + ``<N>epoch.pth``);
* a transformers HuBERT directory (``save_pretrained``).

Run as a script to build a folder of checkpoints for the walk-through::

    python tests/offline/artifacts.py OUTDIR
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "make_probe",
    "make_fairseq_hubert",
    "make_fairseq_wav2vec2",
    "make_fairseq_multires_hubert",
    "make_espnet_hubert",
    "make_transformers_hubert",
    "perturb_checkpoint",
    "TINY_CONV",
]

#: A 7-layer convolutional front-end with HuBERT's overall stride (320) and window (400).
TINY_CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
N_PHONES = 6


def make_probe(folder: str | os.PathLike, *, n_utts: int = 6, seed: int = 0,
               sample_rate: int = 16000, labels: bool = True, seconds: tuple[float, float] = (0.6, 1.2)) -> Path:
    """Write seeded tone/noise utterances, a manifest and frame labels.

    Each utterance is a sequence of 'phones': segments of a sine at a phone-specific
    frequency plus noise, so the labels are learnable from the audio.

    Returns:
        Path of the ``probe.tsv`` manifest.
    """
    import soundfile as sf

    folder = Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [str(folder.resolve())]
    phn_lines = []
    for i in range(n_utts):
        n = int(rng.uniform(*seconds) * sample_rate)
        n_frames = (n - 400) // 320 + 1
        frame_labels = np.zeros(n_frames, dtype=np.int64)
        wav = np.zeros(n, dtype=np.float64)
        pos = 0
        while pos < n_frames:
            dur = int(rng.integers(3, 10))
            ph = int(rng.integers(0, N_PHONES))
            frame_labels[pos:pos + dur] = ph
            s0, s1 = pos * 320, min(n, (pos + dur) * 320 + 80)
            t = np.arange(s1 - s0) / sample_rate
            wav[s0:s1] = 0.3 * np.sin(2 * np.pi * (200 + 150 * ph) * t)
            pos += dur
        wav += 0.02 * rng.standard_normal(n)
        rel = f"wav/utt{i:02d}.wav"
        sf.write(folder / rel, wav.astype(np.float32), sample_rate)
        lines.append(f"{rel}\t{n}")
        phn_lines.append(" ".join(map(str, frame_labels.tolist())))
    (folder / "probe.tsv").write_text("\n".join(lines) + "\n")
    if labels:
        (folder / "probe.phn").write_text("\n".join(phn_lines) + "\n")
    return folder / "probe.tsv"


def _dict_file(folder: Path, n: int, label: str = "km") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"dict.{label}.txt").write_text("".join(f"{i} 1\n" for i in range(n)))


def _full_cfg(model_cfg: object, model_name: str, task_cfg: object, task_name: str,
              task_overrides: dict | None = None) -> dict:
    """The config dict fairseq's trainer stores: the whole FairseqConfig, resolved, enums as str."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.structured(FairseqConfig)
    with open_dict(cfg):
        cfg.model = OmegaConf.structured(model_cfg)
        cfg.model._name = model_name
        cfg.task = OmegaConf.structured(task_cfg)
        cfg.task._name = task_name
        for k, v in (task_overrides or {}).items():
            cfg.task[k] = v
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _fairseq_state(cfg: dict, model: torch.nn.Module, num_updates: int,
                   val_loss: float | None, task_state: dict | None = None) -> dict:
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [
            {"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
             "lr_scheduler_state": {"best": val_loss}, "num_updates": num_updates}
        ],
        "task_state": task_state or {},
        "extra_state": {"epoch": 1, "val_loss": val_loss,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    return state


def make_fairseq_hubert(path: str | os.PathLike, *, num_updates: int = 100, seed: int = 0,
                        layers: int = 2, dim: int = 32, n_clusters: int = 12,
                        val_loss: float | None = 5.0, with_task_state: bool = False) -> Path:
    """Save a tiny random fairseq HuBERT checkpoint in fairseq's layout.

    The task config points at a label directory that does not exist after this call (as on a
    machine other than the training one); with ``with_task_state`` the dictionaries are
    stored in ``task_state`` as fairseq's trainer does.
    """
    import tempfile

    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as label_dir:
        _dict_file(Path(label_dir), n_clusters)
        task_cfg = HubertPretrainingConfig(data=label_dir, labels=["km"], label_dir=label_dir,
                                           label_rate=50.0)
        task = HubertPretrainingTask(task_cfg)
        model_cfg = HubertConfig(
            label_rate=50.0, encoder_layers=layers, encoder_embed_dim=dim,
            encoder_ffn_embed_dim=2 * dim, encoder_attention_heads=2, final_dim=16,
            conv_feature_layers=TINY_CONV, conv_pos=16, conv_pos_groups=4,
        )
        model = HubertModel(model_cfg, task_cfg, task.dictionaries)
        cfg = _full_cfg(model_cfg, "hubert", task_cfg, "hubert_pretraining",
                        {"data": "/nonexistent/training/labels",
                         "label_dir": "/nonexistent/training/labels"})
        ts = {"dictionaries": task.dictionaries} if with_task_state else None
        state = _fairseq_state(cfg, model, num_updates, val_loss, ts)
    torch.save(state, path)
    return path


def make_fairseq_wav2vec2(path: str | os.PathLike, *, num_updates: int = 100, seed: int = 0,
                          layers: int = 2, dim: int = 32, val_loss: float | None = 3.0) -> Path:
    """Save a tiny random fairseq wav2vec 2.0 checkpoint in fairseq's layout."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_cfg = Wav2Vec2Config(
        encoder_layers=layers, encoder_embed_dim=dim, encoder_ffn_embed_dim=2 * dim,
        encoder_attention_heads=2, final_dim=16, conv_feature_layers=TINY_CONV, conv_pos=16,
        conv_pos_groups=4, latent_vars=8, latent_groups=2, latent_dim=0,
    )
    model = Wav2Vec2Model(model_cfg)
    cfg = _full_cfg(model_cfg, "wav2vec2", AudioPretrainingConfig(data="/nonexistent/manifests"),
                    "audio_pretraining")
    torch.save(_fairseq_state(cfg, model, num_updates, val_loss), path)
    return path


def make_fairseq_multires_hubert(path: str | os.PathLike, *, num_updates: int = 100, seed: int = 0,
                                 dim: int = 32, n_clusters: int = 10,
                                 val_loss: float | None = 4.0) -> Path:
    """Save a tiny random MR-HuBERT checkpoint in fairseq's layout (model ``multires_hubert``).

    The model is built with s3prl's port (the fairseq release has no MR-HuBERT); the file
    has the layout fairseq main writes: ``cfg.model._name == "multires_hubert"``.
    """
    import dataclasses
    import enum

    from s3prl.upstream.multires_hubert.hubert_model import (
        MultiresHubertConfig,
        MultiresHubertModel,
        MultiresHubertPretrainingConfig,
    )

    def plain(dc: object) -> dict:
        out = {}
        for f in dataclasses.fields(dc):
            v = getattr(dc, f.name)
            out[f.name] = str(v.value if isinstance(v, enum.Enum) else v) if isinstance(v, enum.Enum) else v
        return out

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    task_cfg = MultiresHubertPretrainingConfig(label_rate_ratios=[1, 2])
    model_cfg = MultiresHubertConfig(
        label_rate=50.0, label_rate_ratios=[1, 2], encoder_layers=1, encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim, encoder_attention_heads=2, final_dim=16,
        conv_feature_layers=TINY_CONV, conv_pos=16, conv_pos_groups=4,
    )
    dictionaries = [[str(i) for i in range(n_clusters)]] * 2
    model = MultiresHubertModel(model_cfg, task_cfg, dictionaries)
    mc = plain(model_cfg)
    mc["_name"] = "multires_hubert"
    tc = plain(task_cfg)
    tc.update({"_name": "multires_hubert_pretraining", "data": "/nonexistent/data",
               "label_dir": "/nonexistent/labels", "labels": ["km50", "km25"]})
    cfg = {"_name": None, "common": {"_name": None, "seed": 1}, "model": mc, "task": tc}
    torch.save(_fairseq_state(cfg, model, num_updates, val_loss), path)
    return path


def perturb_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, scale: float,
                       num_updates: int, seed: int = 0, val_loss: float | None = None) -> Path:
    """Copy a fairseq checkpoint with weights moved by ``scale`` x seeded noise (a 'later' step)."""
    state = torch.load(src, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(seed)
    state["model"] = {
        k: (v + scale * torch.randn(v.shape, generator=g) * (v.std() if v.numel() > 1 else 1.0))
        if torch.is_floating_point(v) else v
        for k, v in state["model"].items()
    }
    state["optimizer_history"][-1]["num_updates"] = num_updates
    if val_loss is not None:
        state["extra_state"]["val_loss"] = val_loss
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


def make_espnet_hubert(folder: str | os.PathLike, *, epochs: tuple[int, ...] = (1, 2),
                       seed: int = 0, layers: int = 2, dim: int = 32, n_tokens: int = 10) -> Path:
    """Write an ESPnet HuBERT experiment directory (torchaudio HuBERT encoder).

    Returns:
        The directory (``config.yaml`` + ``<N>epoch.pth`` per epoch).
    """
    import yaml
    from espnet2.tasks.hubert import HubertTask

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [str(i) for i in range(n_tokens)] + ["<unk>", "<sos/eos>"]
    config = {
        "token_list": tokens,
        "input_size": 1,
        "frontend": None,
        "frontend_conf": {},
        "specaug": None,
        "specaug_conf": {},
        "normalize": None,
        "normalize_conf": {},
        "preencoder": None,
        "preencoder_conf": {},
        "encoder": "torchaudio_hubert",
        "encoder_conf": {
            "encoder_projection_dropout": 0.0,
            "encoder_attention_dropout": 0.0,
            "encoder_ff_interm_dropout": 0.0,
            "encoder_dropout": 0.0,
            "encoder_layer_drop": 0.0,
            "encoder_embed_dim": dim,
            "encoder_num_layers": layers,
            "encoder_num_heads": 2,
            "encoder_ff_interm_features": 2 * dim,
            "encoder_pos_conv_kernel": 16,
            "encoder_pos_conv_groups": 4,
            "extractor_conv_layer_config": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
            "final_dim": 16,
        },
        "model": "torchaudio",
        "model_conf": {},
        "num_classes": n_tokens,
    }
    # Start from every default of the task's parser, as ESPnet's own config.yaml does.
    defaults = vars(HubertTask.get_parser().parse_args([]))
    defaults.update(config)
    cfg_path = folder / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(defaults))
    for i, epoch in enumerate(epochs):
        torch.manual_seed(seed + i)
        model, _ = HubertTask.build_model_from_file(str(cfg_path), None, "cpu")
        torch.save(model.state_dict(), folder / f"{epoch}epoch.pth")
    return folder


def make_transformers_hubert(folder: str | os.PathLike, *, seed: int = 0, layers: int = 2,
                             dim: int = 32, global_step: int | None = None) -> Path:
    """``save_pretrained`` a tiny random transformers HubertModel."""
    import json

    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    cfg = HubertConfig(
        hidden_size=dim, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * dim,
        conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0,
    )
    model = HubertModel(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    if global_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": global_step}))
    return folder


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    make_probe(out / "probe", n_utts=8)
    base = make_fairseq_hubert(out / "checkpoints" / "hubert_tiny" / "checkpoint_1_100.pt",
                               num_updates=100, val_loss=6.5)
    for i, (upd, loss) in enumerate([(200, 6.1), (300, 5.8), (400, 5.6), (500, 5.5)], start=1):
        perturb_checkpoint(base, out / "checkpoints" / "hubert_tiny" / f"checkpoint_{i + 1}_{upd}.pt",
                           scale=0.15 * i, num_updates=upd, seed=i, val_loss=loss)


if __name__ == "__main__":
    _main()
