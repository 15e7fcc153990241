"""Seeded synthetic data for the SpeechBrain tests: CSV manifests for the recipe, a probe.

Every utterance is a few harmonic tones whose pitch changes by segments, plus noise; the
probe's 50 Hz phone labels follow the segments, so label metrics have something to find.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

RECIPE = Path(__file__).parent / "recipe"
SAMPLE_RATE = 16000


def _utterance(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, list[int]]:
    n = int(seconds * SAMPLE_RATE)
    seg = 0.12  # seconds per "phone"
    n_seg = int(np.ceil(seconds / seg))
    phones = rng.integers(0, 6, size=n_seg)
    t = np.arange(n) / SAMPLE_RATE
    idx = np.minimum((t / seg).astype(int), n_seg - 1)
    f0 = 110 + 35 * phones[idx]
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(0.25 / k * np.sin(k * phase) for k in (1, 2, 3)) + 0.03 * rng.standard_normal(n)
    labels = [int(phones[min(int(j / 50 / seg), n_seg - 1)]) for j in range(int(seconds * 50))]
    return x.astype(np.float32), labels


def write_corpus(root: Path, *, n_train: int = 16, n_valid: int = 4, n_probe: int = 8,
                 seed: int = 0) -> dict[str, Path]:
    """Write train/valid CSVs (SpeechBrain format, ``$data_root`` paths) and a labelled probe.

    Returns:
        ``{"data": folder of the CSVs, "probe": probe.tsv}``.
    """
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("valid", n_valid)):
        rows = ["ID,duration,wav"]
        for i in range(count):
            seconds = float(rng.uniform(1.0, 2.0))
            x, _ = _utterance(rng, seconds)
            name = f"{split}{i}.wav"
            sf.write(root / "wav" / name, x, SAMPLE_RATE)
            rows.append(f"{split}{i},{len(x) / SAMPLE_RATE:.4f},$data_root/wav/{name}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    lines, phn = [str(root / "wav")], []
    for i in range(n_probe):
        x, labels = _utterance(rng, float(rng.uniform(1.0, 2.0)))
        sf.write(root / "wav" / f"probe{i}.wav", x, SAMPLE_RATE)
        lines.append(f"probe{i}.wav\t{len(x)}")
        phn.append(" ".join(map(str, labels)))
    (root / "probe.tsv").write_text("\n".join(lines) + "\n")
    (root / "probe.phn").write_text("\n".join(phn) + "\n")
    return {"data": root, "probe": root / "probe.tsv"}


def copy_recipe(dest: Path) -> Path:
    """Copy the miniature recipe (train.py, hparams/) to ``dest``; returns its folder."""
    shutil.copytree(RECIPE, dest, dirs_exist_ok=True)
    return dest
