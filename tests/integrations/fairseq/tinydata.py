"""A tiny, seeded, labelled audio corpus in fairseq's layout, and the tiny-model overrides.

Each utterance is a chain of short segments; every segment is one of ``NUM_CLASSES`` sound
classes (a tone, a two-tone chord, a chirp or a band of noise), so the frame labels (the class of
the segment under each 20 ms frame) carry real information about the audio. The same labels are
written as HuBERT targets (``<split>.km`` + ``dict.km.txt``) and as probe phone labels
(``<split>.phn``).

Used by the fairseq end-to-end tests and by ``benchmarks/bench_fairseq_overhead.py``.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "NUM_CLASSES",
    "SAMPLE_RATE",
    "make_corpus",
    "fairseq_root",
    "hubert_command",
    "wav2vec2_command",
    "plugin_overrides",
]

SAMPLE_RATE = 16000
NUM_CLASSES = 8


def _frames(num_samples: int) -> int:
    """Frames of the HuBERT / wav2vec 2.0 convolutional front-end (400-sample window, 320 hop)."""
    return max(0, (num_samples - 400) // 320 + 1)


def _segment(cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    base = 150.0 * (1.0 + cls)  # 150 .. 1200 Hz
    kind = cls % 4
    if kind == 0:
        sig = np.sin(2 * np.pi * base * t)
    elif kind == 1:
        sig = 0.6 * np.sin(2 * np.pi * base * t) + 0.4 * np.sin(2 * np.pi * 2.5 * base * t)
    elif kind == 2:
        f = base + (3 * base - base) * t / max(t[-1], 1e-3)
        sig = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)
    else:
        noise = rng.standard_normal(n)
        spec = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec[(freqs < base) | (freqs > 2 * base + 500)] = 0
        sig = np.fft.irfft(spec, n)
        sig /= np.abs(sig).max() + 1e-9
    env = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / 80.0)
    return (0.5 * sig * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _utterance(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    n_total = int(seconds * SAMPLE_RATE)
    wav = np.zeros(n_total, dtype=np.float32)
    owner = np.zeros(n_total, dtype=np.int64)
    pos = 0
    while pos < n_total:
        seg = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
        seg = min(seg, n_total - pos)
        cls = int(rng.integers(NUM_CLASSES))
        wav[pos:pos + seg] = _segment(cls, seg, rng)
        owner[pos:pos + seg] = cls
        pos += seg
    n = _frames(n_total)
    centres = np.arange(n) * 320 + 200
    labels = owner[np.minimum(centres, n_total - 1)]
    return wav, labels


def make_corpus(root: str | os.PathLike, *, n_train: int = 24, n_valid: int = 12,
                seconds: tuple[float, float] = (1.0, 2.0), seed: int = 0) -> Path:
    """Write ``train``/``valid`` manifests, audio, ``.km`` targets, ``.phn`` labels, dictionary.

    Args:
        root: Output folder (created).
        n_train: Training utterances.
        n_valid: Validation utterances.
        seconds: Range of utterance durations.
        seed: Seed of everything.

    Returns:
        The folder (absolute), usable as ``task.data`` and ``task.label_dir``.
    """
    root = Path(root).resolve()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("valid", n_valid)):
        manifest = [str(root / "wav")]
        km = []
        for i in range(count):
            wav, labels = _utterance(rng, float(rng.uniform(*seconds)))
            name = f"{split}_{i:03d}.wav"
            sf.write(root / "wav" / name, wav, SAMPLE_RATE, subtype="PCM_16")
            manifest.append(f"{name}\t{len(wav)}")
            km.append(" ".join(str(int(v)) for v in labels))
        (root / f"{split}.tsv").write_text("\n".join(manifest) + "\n")
        (root / f"{split}.km").write_text("\n".join(km) + "\n")
        (root / f"{split}.phn").write_text("\n".join(km) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{c} 1\n" for c in range(NUM_CLASSES)))
    return root


def fairseq_root() -> Path:
    """The installed fairseq package folder (it ships the example configs)."""
    import importlib.util

    spec = importlib.util.find_spec("fairseq")
    if spec is None or spec.origin is None:
        raise RuntimeError("fairseq is not installed")
    return Path(spec.origin).parent


def _train_exe() -> str:
    exe = Path(sys.executable).parent / "fairseq-hydra-train"
    if exe.exists():
        return str(exe)
    found = shutil.which("fairseq-hydra-train")
    if found is None:
        raise RuntimeError("fairseq-hydra-train is not on PATH")
    return found


_COMMON = [
    "common.cpu=true",
    "common.fp16=false",
    "common.log_format=json",
    "common.log_interval=1",
    "common.seed=1",
    "distributed_training.distributed_world_size=1",
    "dataset.num_workers=0",
    "dataset.max_tokens=64000",
    "dataset.validate_interval_updates=2",
    "optimization.max_update=4",
    "lr_scheduler.warmup_updates=1",
    "checkpoint.no_epoch_checkpoints=true",
    "task.min_sample_size=8000",
    "+model.encoder_layers=2",
    "+model.encoder_ffn_embed_dim=128",
    "+model.encoder_attention_heads=2",
    "+model.conv_pos=16",
]
_CONV = "'[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'"


def hubert_command(data: Path, run_dir: Path | str, extra: list[str] | None = None) -> list[str]:
    """The stock ``hubert_base_librispeech`` recipe with tiny-model overrides (2 layers, dim 64)."""
    cfg_dir = fairseq_root() / "examples" / "hubert" / "config" / "pretrain"
    return [
        _train_exe(), "--config-dir", str(cfg_dir), "--config-name", "hubert_base_librispeech",
        f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", "model.label_rate=50",
        f"hydra.run.dir={run_dir}", *_COMMON, f"model.conv_feature_layers={_CONV}",
        "model.final_dim=32", "+model.encoder_embed_dim=64", *(extra or []),
    ]


def wav2vec2_command(data: Path, run_dir: Path | str, extra: list[str] | None = None) -> list[str]:
    """The stock ``wav2vec2_base_librispeech`` recipe with tiny-model overrides (2 layers, dim 64)."""
    cfg_dir = fairseq_root() / "examples" / "wav2vec" / "config" / "pretraining"
    return [
        _train_exe(), "--config-dir", str(cfg_dir), "--config-name", "wav2vec2_base_librispeech",
        f"task.data={data}", f"hydra.run.dir={run_dir}", *_COMMON,
        f"+model.conv_feature_layers={_CONV}", "model.final_dim=32", "model.encoder_embed_dim=64",
        "+model.latent_vars=16", "+model.latent_dim=16", "+model.num_negatives=5",
        *(extra or []),
    ]


def plugin_overrides(task: str) -> list[str]:
    """``common.user_dir`` and ``task._name`` for the sslvitals plugin."""
    from sslvitals.integrations.fairseq.cli import user_dir

    return [f"common.user_dir={user_dir()}", f"task._name={task}"]
