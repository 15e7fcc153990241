"""A tiny, seeded ESPnet HuBERT experiment: Kaldi-style data folders, token list, commands.

Every utterance is a sequence of short sound events drawn from ``NUM_CLASSES`` classes (pure
tones, tone pairs, rising sweeps, band-limited noise bursts, each class with its own pitch).
The class of the event under each 20 ms frame is written both as the HuBERT target sequence
(``text``, one token per frame at 50 Hz) and as the probe's frame labels (``phn``), so the
label-aware metrics see labels that really describe the audio.

Layout written by :func:`make_experiment` under ``root``::

    wav/<utt>.wav                         16 kHz mono int16
    data/{train,valid}/wav.scp text utt2spk phn
    data/{train,valid}/speech_shape text_shape
    tokens.txt                            "0".."7" then "<unk>" (token id == class id)
    dict.txt                              fairseq dictionary of the classes (fairseq encoder)

Used by the ESPnet end-to-end tests; the command helpers return argument lists for
``python -m sslvitals.integrations.espnet.hubert_train``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["NUM_CLASSES", "SAMPLE_RATE", "make_experiment", "frames_of", "hubert_args",
           "ENCODERS"]

SAMPLE_RATE = 16000
NUM_CLASSES = 8
WINDOW, HOP = 400, 320


def frames_of(num_samples: int) -> int:
    """Frames of the HuBERT convolutional front-end for ``num_samples`` samples."""
    return max(0, (num_samples - WINDOW) // HOP + 1)


def _event(cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of one sound event of class ``cls``."""
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    pitch = 180.0 * (1.0 + 0.6 * cls)
    family = cls % 4
    if family == 0:
        x = np.sin(2.0 * np.pi * pitch * t)
    elif family == 1:
        x = np.sin(2.0 * np.pi * pitch * t) + 0.7 * np.sin(2.0 * np.pi * 1.5 * pitch * t)
    elif family == 2:
        inst = pitch * (1.0 + 1.5 * t / max(t[-1], 1e-3))
        x = np.sin(2.0 * np.pi * np.cumsum(inst) / SAMPLE_RATE)
    else:
        white = rng.standard_normal(n)
        spectrum = np.fft.rfft(white)
        freq = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        spectrum[(freq < pitch) | (freq > 3.0 * pitch)] = 0.0
        x = np.fft.irfft(spectrum, n)
    x = x / (np.abs(x).max() + 1e-9)
    ramp = np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / 64.0, 0.0, 1.0)
    return 0.4 * x * ramp + 0.005 * rng.standard_normal(n)


def _utterance(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Waveform ``(S,)`` float32 and frame classes ``(frames_of(S),)`` int64."""
    total = int(seconds * SAMPLE_RATE)
    wav = np.zeros(total)
    owner = np.zeros(total, dtype=np.int64)
    start = 0
    while start < total:
        n = min(int(rng.uniform(0.1, 0.25) * SAMPLE_RATE), total - start)
        cls = int(rng.integers(NUM_CLASSES))
        wav[start:start + n] = _event(cls, n, rng)
        owner[start:start + n] = cls
        start += n
    centres = np.arange(frames_of(total)) * HOP + WINDOW // 2
    return wav.astype(np.float32), owner[np.minimum(centres, total - 1)]


def make_experiment(root: str | Path, *, n_train: int = 16, n_valid: int = 8,
                    seconds: tuple[float, float] = (1.0, 1.6), seed: int = 0) -> Path:
    """Write the tiny corpus and its ESPnet files under ``root``.

    Args:
        root: Output folder (created).
        n_train: Training utterances.
        n_valid: Validation utterances.
        seconds: Range of utterance durations in seconds.
        seed: Seed of the audio and the labels.

    Returns:
        ``root`` as an absolute path.
    """
    root = Path(root).resolve()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("valid", n_valid)):
        d = root / "data" / split
        d.mkdir(parents=True, exist_ok=True)
        rows: dict[str, list[str]] = {k: [] for k in
                                      ("wav.scp", "text", "utt2spk", "phn", "speech_shape",
                                       "text_shape")}
        for i in range(count):
            uid = f"spk{i % 2}-{split}{i:03d}"
            wav, labels = _utterance(rng, float(rng.uniform(*seconds)))
            path = root / "wav" / f"{uid}.wav"
            sf.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")
            tokens = " ".join(str(int(c)) for c in labels)
            rows["wav.scp"].append(f"{uid} {path}")
            rows["text"].append(f"{uid} {tokens}")
            rows["utt2spk"].append(f"{uid} spk{i % 2}")
            rows["phn"].append(f"{uid} {tokens}")
            rows["speech_shape"].append(f"{uid} {len(wav)}")
            rows["text_shape"].append(f"{uid} {len(labels)},{NUM_CLASSES + 1}")
        for name, lines in rows.items():
            (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "tokens.txt").write_text(
        "".join(f"{c}\n" for c in range(NUM_CLASSES)) + "<unk>\n", encoding="utf-8")
    (root / "dict.txt").write_text("".join(f"{c} 1\n" for c in range(NUM_CLASSES)),
                                   encoding="utf-8")
    return root


#: Tiny encoder settings per ESPnet HuBERT encoder (2 blocks, width 32).
ENCODERS: dict[str, list[str]] = {
    "torchaudio_hubert": [
        "--model", "torchaudio",
        "--encoder", "torchaudio_hubert",
        "--encoder_conf", "extractor_conv_layer_config=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],"
                          "[32,3,2],[32,2,2],[32,2,2]]",
        "--encoder_conf", "encoder_embed_dim=32",
        "--encoder_conf", "encoder_num_layers=2",
        "--encoder_conf", "encoder_num_heads=2",
        "--encoder_conf", "encoder_ff_interm_features=64",
        "--encoder_conf", "encoder_pos_conv_kernel=16",
        "--encoder_conf", "encoder_pos_conv_groups=4",
        "--encoder_conf", "encoder_layer_drop=0.0",
        "--encoder_conf", "final_dim=16",
        "--encoder_conf", "mask_prob=0.3",
        "--encoder_conf", "mask_length=2",
    ],
    "hubert_pretrain": [
        "--model", "fairseq",
        "--encoder", "hubert_pretrain",
        "--encoder_conf", "output_size=32",
        "--encoder_conf", "linear_units=64",
        "--encoder_conf", "attention_heads=2",
        "--encoder_conf", "num_blocks=2",
        "--encoder_conf", "label_rate=50",
        "--encoder_conf", "conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'",
        "--encoder_conf", "conv_pos=16",
        "--encoder_conf", "conv_pos_groups=4",
        "--encoder_conf", "mask_prob=0.3",
        "--encoder_conf", "mask_length=2",
        "--encoder_conf", "encoder_layerdrop=0.0",
    ],
}


def data_args(root: Path, output_dir: Path, *, epochs: int = 2) -> list[str]:
    """Data, batching and optimiser arguments shared by ``hubert_train`` and ``ssl_train``.

    Args:
        root: The folder returned by :func:`make_experiment`.
        output_dir: Experiment folder.
        epochs: ``--max_epoch``.
    """
    train, valid = root / "data" / "train", root / "data" / "valid"
    return [
        "--use_preprocessor", "true",
        "--token_type", "word",
        "--token_list", str(root / "tokens.txt"),
        "--train_data_path_and_name_and_type", f"{train / 'wav.scp'},speech,sound",
        "--train_data_path_and_name_and_type", f"{train / 'text'},text,text",
        "--valid_data_path_and_name_and_type", f"{valid / 'wav.scp'},speech,sound",
        "--valid_data_path_and_name_and_type", f"{valid / 'text'},text,text",
        "--train_shape_file", str(train / "speech_shape"),
        "--train_shape_file", str(train / "text_shape"),
        "--valid_shape_file", str(valid / "speech_shape"),
        "--valid_shape_file", str(valid / "text_shape"),
        "--output_dir", str(output_dir),
        "--ngpu", "0",
        "--num_workers", "0",
        "--batch_type", "unsorted",
        "--batch_size", "4",
        "--max_epoch", str(epochs),
        "--optim", "adam",
        "--optim_conf", "lr=0.0005",
        "--collate_fn_conf", "label_downsampling=1",
        "--collate_fn_conf", "pad=false",
        "--collate_fn_conf", "rand_crop=true",
        "--seed", "1",
        "--resume", "false",
    ]


def hubert_args(root: Path, output_dir: Path, encoder: str, *, epochs: int = 2,
                extra: list[str] | None = None) -> list[str]:
    """Arguments of ``hubert_train`` for the tiny experiment (the stock options of hubert.sh).

    Args:
        root: The folder returned by :func:`make_experiment`.
        output_dir: Experiment folder.
        encoder: A key of :data:`ENCODERS`.
        epochs: ``--max_epoch``.
        extra: Further arguments appended last (e.g. ``--vitals_config``).
    """
    enc = list(ENCODERS[encoder])
    if encoder == "hubert_pretrain":
        enc += ["--encoder_conf", f"hubert_dict={root / 'dict.txt'}"]
    return [
        "--normalize", "none",
        "--input_size", "1",
        "--specaug", "none",
        "--num_classes", str(NUM_CLASSES),
        *data_args(root, output_dir, epochs=epochs),
        *enc,
        *(extra or []),
    ]


def python() -> str:
    """The interpreter running the tests (the project's venv)."""
    return sys.executable


def build_model(root: Path, encoder: str, seed: int = 0):  # noqa: ANN201 - an ESPnet model
    """Build the tiny HuBERT of :func:`hubert_args` in this process with seeded weights.

    Returns:
        The ESPnet model (``TorchAudioHubertPretrainModel`` or ``HubertPretrainModel``) in
        eval mode.
    """
    import torch
    from espnet2.tasks.hubert import HubertTask

    args = HubertTask.get_parser().parse_args(hubert_args(root, root / "unused", encoder))
    torch.manual_seed(seed)
    model = HubertTask.build_model(args)
    return model.eval()


#: A tiny ESPnet SSL-task model (``espnet2.bin.ssl_train``): wav2vec CNN front-end, 2-block
#: transformer, HuBERT loss with masking.
SSL_CONFIG: dict = {
    "input_size": None,
    "frontend": "wav2vec_cnn",
    "frontend_conf": {"norm_mode": "group_norm", "conv_mode": "standard", "bias": False,
                      "shapes": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2},
    "normalize": None,
    "specaug": None,
    "preencoder": "linear",
    "preencoder_conf": {"output_size": 32},
    "encoder": "transformer",
    "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                     "num_blocks": 2, "input_layer": "wav2vec", "normalize_before": False},
    "loss": [{"name": "hubert", "conf": {"num_classes": NUM_CLASSES, "final_dim": 16}}],
    "util": [{"name": "mask", "conf": {"mask_prob": 0.3, "mask_length": 2}}],
}


def build_ssl_model(root: Path, seed: int = 0):  # noqa: ANN201 - an ESPnet model
    """Build the tiny SSL-task model of :data:`SSL_CONFIG` in this process, in eval mode."""
    import torch
    import yaml
    from espnet2.tasks.ssl import SSLTask

    conf = root / "ssl_config.yaml"
    conf.write_text(yaml.safe_dump(SSL_CONFIG))
    args = SSLTask.get_parser().parse_args(
        ["--config", str(conf), "--token_list", str(root / "tokens.txt"),
         "--output_dir", str(root / "unused")])
    torch.manual_seed(seed)
    return SSLTask.build_model(args).eval()
