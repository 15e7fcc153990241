#!/usr/bin/env python
"""CPU miniature of the paper's HuBERT experiment: do early-checkpoint metrics predict the
final downstream quality better than the pretraining loss?

Stages (each resumable; a finished stage is skipped on a rerun with the same work directory):

1. ``corpus``: synthesise two labelled multi-speaker corpora with eSpeak NG
   (:func:`sslvitals.synth.synthesize_corpus`):

   * the *pretraining* corpus: ``train`` (pretraining audio), ``valid`` (fairseq's own
     validation) and ``probe`` (held-out speakers; the audio the vitals are measured on);
   * the *downstream* corpus (another seed, other sentences): ``train`` (labelled training
     frames of the phone classifier; its utterances, split per speaker, also serve speaker
     identification), ``valid`` (held-out speakers: picks the phone layer) and ``probe``
     (the same held-out speakers, other sentences: the reported phone score);

   plus the pretraining targets every configuration asks for (:func:`make_targets`: MFCC
   k-means, the synthesiser's phones, or random labels).
2. ``pretrain``: one real ``fairseq-hydra-train`` per configuration of :data:`RUNS` (the stock
   ``hubert_base_librispeech`` recipe shrunk by overrides, built with
   :func:`sslvitals.demo.fairseq_train_command`, plus :data:`FAST_LEARNING`), with the
   sslvitals plugin measuring every layer on the probe at each validation (every ``early``
   updates, so at the early step and at the end) and checkpoints kept at every validation
   (``keep_interval_updates=-1``). At most ``--jobs`` trainings run at once, each
   single-threaded.
3. ``downstream``: frozen final checkpoint -> features of every layer on the downstream
   corpus -> two linear probes per layer (multinomial logistic regression, L-BFGS):

   * ``phone_acc``: phone recognition, frame accuracy on held-out speakers (silence frames
     excluded), at the layer with the best accuracy on the downstream ``valid`` split;
   * ``speaker_acc``: speaker identification of the downstream training speakers on held-out
     utterances (frame accuracy on speech frames), at the layer best on validation utterances.

   The same probes on MFCC + deltas give a no-pretraining reference.
4. ``correlate``: ``sslvitals correlate`` of every metric and layer at the *early* update
   (and, for reference, at the last update) with the downstream scores, next to the
   validation loss at the same update; ``sslvitals plot``; a summary table and figures.

Several training seeds share one work directory (``--seed``); ``seeds.py`` then compares them
and answers the question across configurations with seed-averaged values.

Usage::

    .venv/bin/python recipes/paper/mini/run.py --smoke --workdir ../mini-smoke
    .venv/bin/python recipes/paper/mini/run.py --workdir ../mini-work --seed 0 \\
        --results recipes/paper/mini/results/seed0
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("mini")

# ---------------------------------------------------------------------------------------------
# Configurations


@dataclass(frozen=True)
class RunConfig:
    """One pretraining configuration.

    Attributes:
        name: Run name (folder name; also the ``run`` column of every table).
        what: One line saying what differs from ``km100``, the reference.
        targets: Pretraining targets: ``"km<K>"`` (MFCC k-means with K clusters, HuBERT's first
            iteration), ``"phone"`` (the synthesiser's own 50 Hz phone labels: an upper bound
            on target quality) or ``"random<K>"`` (K classes drawn uniformly per frame: targets
            that carry no information).
        mask_prob: HuBERT ``model.mask_prob``; 0 (the reference) trains without masking (see
            :func:`mask_overrides`).
        lr: Peak learning rate.
        updates: Optimizer updates (a multiple of the mode's early step).
        dim: Transformer width (FFN is 4x).
        layers: Transformer blocks.
    """

    name: str
    what: str
    targets: str = "km100"
    mask_prob: float = 0.0
    lr: float = 3e-3
    updates: int = 800
    dim: int = 96
    layers: int = 4


#: The full miniature: 16 configurations. Target quality spans information-free (random)
#: through MFCC k-means (k = 25, 100) to the synthesiser's own phones; masking (none, 0.30, the
#: stock 0.80), learning rate (barely training to unstable), training length and width vary
#: around the MFCC reference, some of them with phone targets too.
RUNS: tuple[RunConfig, ...] = (
    RunConfig("km100", "reference: MFCC k-means k=100, no masking, lr 3e-3, 800 updates, 4x96"),
    RunConfig("km25", "MFCC k-means targets with k=25", targets="km25"),
    RunConfig("phone", "the synthesiser's phone labels as targets (upper bound)", targets="phone"),
    RunConfig("random", "random targets (100 classes, uniform per frame)", targets="random100"),
    RunConfig("mask030", "masking, mask_prob 0.30 (loss on masked frames)", mask_prob=0.30),
    RunConfig("mask080", "masking, mask_prob 0.80 (the stock HuBERT Base value)", mask_prob=0.80),
    RunConfig("phone-mask080", "phone targets, mask_prob 0.80", targets="phone", mask_prob=0.80),
    RunConfig("km25-mask080", "k=25 targets, mask_prob 0.80", targets="km25", mask_prob=0.80),
    RunConfig("lr1e-5", "learning rate 1e-5 (barely trains)", lr=1e-5),
    RunConfig("lr3e-4", "learning rate 3e-4", lr=3e-4),
    RunConfig("lr1e-2", "learning rate 1e-2 (unstable)", lr=1e-2),
    RunConfig("phone-lr3e-4", "phone targets, learning rate 3e-4", targets="phone", lr=3e-4),
    RunConfig("short", "half the updates (400)", updates=400),
    RunConfig("phone-short", "phone targets, half the updates (400)", targets="phone", updates=400),
    RunConfig("narrow", "width 32 instead of 96", dim=32),
    RunConfig("phone-narrow", "phone targets, width 32", targets="phone", dim=32),
)

#: The smoke test: three configurations, a few updates each.
SMOKE_RUNS: tuple[RunConfig, ...] = (
    RunConfig("km", "reference", updates=6, targets="km20"),
    RunConfig("phone-mask080", "phone targets, mask_prob 0.80", targets="phone", mask_prob=0.80, updates=6),
    RunConfig("random-narrow", "random targets, width 32", targets="random20", updates=6, dim=32),
)


@dataclass(frozen=True)
class Mode:
    """Sizes of one mode (full or smoke)."""

    name: str
    runs: tuple[RunConfig, ...]
    early: int  # the early update (validation and checkpoint interval)
    pre_hours: float
    pre_speakers: int
    pre_heldout: int
    pre_valid_min: float
    pre_probe_min: float
    down_hours: float
    down_speakers: int
    down_heldout: int
    down_valid_min: float
    down_probe_min: float
    max_tokens: int
    conv_channels: int
    vitals_k: int
    reservoir: int
    silhouette: int


FULL = Mode("full", RUNS, early=200, pre_hours=1.0, pre_speakers=8, pre_heldout=2,
            pre_valid_min=2.0, pre_probe_min=8.0, down_hours=0.15, down_speakers=8, down_heldout=3,
            down_valid_min=2.0, down_probe_min=4.0, max_tokens=80000, conv_channels=64,
            vitals_k=100, reservoir=10000, silhouette=3000)
SMOKE = Mode("smoke", SMOKE_RUNS, early=3, pre_hours=0.02, pre_speakers=2, pre_heldout=1,
             pre_valid_min=0.3, pre_probe_min=0.5, down_hours=0.02, down_speakers=2, down_heldout=1,
             down_valid_min=0.2, down_probe_min=0.3, max_tokens=80000, conv_channels=32,
             vitals_k=8, reservoir=2000, silhouette=300)

#: Overrides of the stock recipe that let a tiny model learn within a few hundred updates on
#: one CPU core (profiled: see the README): pre-LayerNorm blocks (stable at a high learning
#: rate), the full gradient into the convolutional front end instead of a tenth, and no
#: dropout (800 updates of 5 s see 1.1 epochs of the 1 h corpus; nothing to overfit).
FAST_LEARNING: tuple[str, ...] = (
    "+model.layer_norm_first=true",
    "model.feature_grad_mult=1.0",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    "model.dropout_input=0.0",
    "model.dropout_features=0.0",
)

SEED = 0
DOWN_SEED = 1
TASKS = ("phone_acc", "speaker_acc")


# ---------------------------------------------------------------------------------------------
# Small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _override_key(ov: str) -> str:
    return ov.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """Hydra overrides ``base`` with every key of ``extra`` replaced (Hydra rejects duplicates).

    An entry of ``extra`` replacing a ``+key=...`` (a key absent from the YAML) keeps the ``+``.
    """
    keys = {_override_key(e): e for e in extra}
    out = []
    for ov in base:
        k = _override_key(ov)
        if k in keys:
            new = keys.pop(k)
            if ov.startswith("+") and not new.startswith("+"):
                new = "+" + new
            out.append(new)
        else:
            out.append(ov)
    return out + [keys[k] for k in keys]


def _sslvitals_cmd() -> list[str]:
    return [sys.executable, "-m", "sslvitals.cli"]


def runs_root(work: Path, seed: int) -> Path:
    """Where the trainings of one seed live: ``WORK/runs`` (default seed) or ``WORK/runs_seed<N>``."""
    return work / "runs" if seed == SEED else work / f"runs_seed{seed}"


def _run_cli(cmd: list[str], log_path: Path) -> None:
    """Run an sslvitals CLI step, log to ``log_path``; raise with the tail on failure."""
    logger.info("$ %s", " ".join(shlex.quote(c) for c in cmd))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log_path, "a", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8").splitlines()[-30:]
        raise RuntimeError(f"command failed (exit {rc}): {cmd}\n" + "\n".join(tail))


# ---------------------------------------------------------------------------------------------
# Stage 1: corpora and targets


def _corpus_params(mode: Mode, which: str) -> dict[str, Any]:
    if which == "pretrain":
        return dict(hours=mode.pre_hours, speakers=mode.pre_speakers, heldout_speakers=mode.pre_heldout,
                    valid_minutes=mode.pre_valid_min, probe_minutes=mode.pre_probe_min, seed=SEED)
    return dict(hours=mode.down_hours, speakers=mode.down_speakers, heldout_speakers=mode.down_heldout,
                valid_minutes=mode.down_valid_min, probe_minutes=mode.down_probe_min, seed=DOWN_SEED)


def make_corpus(path: Path, params: dict[str, Any], jobs: int) -> None:
    """Synthesise a corpus unless one with the same parameters is already there."""
    from sslvitals.synth import synthesize_corpus

    meta = path / "corpus.json"
    if meta.exists() and _read_json(meta).get("params") == params:
        logger.info("[corpus] reusing %s", path)
        return
    logger.info("[corpus] synthesising %s: %s", path.name, params)
    synthesize_corpus(path, **params, jobs=jobs, force=True, progress=False)


def _label_folder(corpus: Path, out: Path) -> None:
    """Make ``out`` a view of ``corpus`` (links to its files) without its targets."""
    out.mkdir(parents=True, exist_ok=True)
    for item in corpus.iterdir():
        if item.suffix == ".km" or item.name in ("dict.km.txt", "targets.json"):
            continue
        link = out / item.name
        if not link.exists():
            link.symlink_to(item.resolve())


def _targets_kind(spec: str) -> tuple[str, int]:
    """``"km100"`` -> ``("km", 100)``; ``"phone"`` -> ``("phone", 0)``; ``"random50"`` -> ``("random", 50)``."""
    m = re.fullmatch(r"(km|random)(\d+)|(phone)", spec)
    if not m:
        raise ValueError(f"unknown targets {spec!r}: use km<K>, random<K> or phone")
    return ("phone", 0) if m.group(3) else (m.group(1), int(m.group(2)))


def make_targets(corpus: Path, labels_root: Path, spec: str) -> Path:
    """Write the pretraining targets ``spec`` (see :class:`RunConfig`); returns their folder.

    The targets of each kind live in their own folder (``labels_root/<spec>``) that links to
    the corpus files, because fairseq reads ``<split>.km`` and ``dict.km.txt`` from one folder.

    * ``km<K>``: :func:`sslvitals.synth.make_mfcc_targets` (k-means on train MFCCs);
    * ``phone``: the corpus's own 50 Hz phone ids (``<split>.phn``), one class per phone;
    * ``random<K>``: K classes drawn uniformly and independently per frame (seeded), with the
      frame count of the phone labels (the same framing fairseq checks against).
    """
    import numpy as np

    from sslvitals.synth import make_mfcc_targets
    from sslvitals.synth.corpus import read_phones

    kind, k = _targets_kind(spec)
    out = labels_root / spec
    done = out / "targets.json"
    if done.exists() and _read_json(done).get("spec") == spec and (out / "train.km").exists():
        logger.info("[targets] reusing %s targets in %s", spec, out)
        return out
    _label_folder(corpus, out)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"spec": spec}
    if kind == "km":
        report = make_mfcc_targets(out, k=k, seed=SEED, progress=False)
        info["probe_pnmi"] = report.quality.get("probe", {}).get("pnmi", float("nan"))
    else:
        classes = len(read_phones(corpus / "phones.txt")) if kind == "phone" else k
        rng = np.random.default_rng(SEED)
        for split in ("train", "valid", "probe"):
            lines = (corpus / f"{split}.phn").read_text(encoding="utf-8").splitlines()
            if kind == "random":
                lines = [" ".join(map(str, rng.integers(0, classes, len(line.split())))) for line in lines]
            (out / f"{split}.km").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(classes)), encoding="utf-8")
        info["classes"] = classes
    info["seconds"] = time.perf_counter() - t0
    _write_json(done, info)
    logger.info("[targets] %s -> %s (%.1f s)", spec, out, info["seconds"])
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: pretraining


def train_command(mode: Mode, cfg: RunConfig, corpus: Path, label_dir: Path, run_dir: Path,
                  seed: int = SEED) -> list[str]:
    """The ``fairseq-hydra-train`` command of one configuration (list of arguments, no shell).

    ``seed`` is fairseq's ``common.seed`` (initialisation, masking, batch order); the corpora
    and the k-means targets do not depend on it.
    """
    from sslvitals import demo

    if cfg.updates % mode.early:
        raise ValueError(f"run {cfg.name}: updates {cfg.updates} is not a multiple of the early step {mode.early}")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([
        "--updates", str(cfg.updates), "--validations", str(cfg.updates // mode.early),
        "--layers", str(cfg.layers), "--dim", str(cfg.dim), "--conv-channels", str(mode.conv_channels),
        "--max-tokens", str(mode.max_tokens), "--lr", str(cfg.lr), "--seed", str(seed),
        "--vitals-k", str(mode.vitals_k), "--reservoir-size", str(mode.reservoir),
        "--silhouette-sample", str(mode.silhouette), "--metrics", "default",
    ])
    cmd = demo.fairseq_train_command(args, corpus, run_dir)
    extra = [
        f"task.label_dir={label_dir}",
        *mask_overrides(cfg.mask_prob),
        *FAST_LEARNING,
        f"checkpoint.save_interval_updates={mode.early}",
        "checkpoint.keep_interval_updates=-1",
        "checkpoint.no_epoch_checkpoints=true",
        # batches hold at most max_tokens samples, so longer utterances (a handful) are left out
        f"+task.max_keep_size={mode.max_tokens}",
        "common.log_interval=25" if mode.name == "full" else "common.log_interval=1",
    ]
    head, overrides = cmd[:5], cmd[5:]
    return head + merge_overrides(overrides, extra)


def mask_overrides(mask_prob: float) -> list[str]:
    """Masking overrides; ``mask_prob == 0`` means training without masking.

    fairseq's HuBERT cannot run with ``mask_prob=0`` (its loss indexes frames with the mask), so
    "no masking" is a vanishing mask probability (fairseq still masks its minimum of two spans
    of 10 frames per utterance) with the loss on the *unmasked* frames only
    (``pred_masked_weight=0``, ``pred_nomask_weight=1``): the model predicts each frame's
    target from the unmasked input.
    """
    if mask_prob == 0:
        return ["model.mask_prob=1e-6", "criterion.pred_masked_weight=0.0", "criterion.pred_nomask_weight=1.0"]
    return [f"model.mask_prob={mask_prob}"]


@dataclass
class _Job:
    cfg: RunConfig
    run_dir: Path
    proc: subprocess.Popen
    log: Any
    started: float


_UPDATE = re.compile(r'"num_updates": "(\d+)"')


def _last_update(log_path: Path) -> int:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20000))
            found = _UPDATE.findall(f.read().decode("utf-8", "replace"))
        return int(found[-1]) if found else 0
    except OSError:
        return 0


def pretrain_all(mode: Mode, runs: Sequence[RunConfig], corpus: Path, label_dirs: dict[int, Path],
                 runs_root: Path, jobs: int, on_done, seed: int = SEED) -> dict[str, float]:
    """Train every configuration (skipping finished ones), ``jobs`` at a time.

    ``on_done(cfg, run_dir)`` is called in this process after each training finishes (and for
    runs finished earlier), so downstream scoring overlaps with the remaining trainings.
    """
    pending = []
    seconds: dict[str, float] = {}
    for cfg in runs:
        run_dir = runs_root / cfg.name
        done = _read_json(run_dir / "done.json") if (run_dir / "done.json").exists() else {}
        if done.get("config") == dataclasses.asdict(cfg) and done.get("seed", SEED) == seed:
            logger.info("[pretrain] %s already finished; skipped", cfg.name)
            seconds[cfg.name] = float(done.get("seconds", float("nan")))
            on_done(cfg, run_dir)
            continue
        pending.append(cfg)
    pending_names = [c.name for c in pending]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1",
               PYTHONUNBUFFERED="1")
    active: list[_Job] = []
    failures: list[str] = []
    last_report = time.monotonic()
    while pending or active:
        while pending and len(active) < jobs:
            cfg = pending.pop(0)
            run_dir = runs_root / cfg.name
            if run_dir.exists():
                shutil.rmtree(run_dir)  # unfinished earlier attempt: restart it cleanly
            run_dir.mkdir(parents=True)
            cmd = train_command(mode, cfg, corpus, label_dirs[cfg.targets], run_dir, seed)
            (run_dir / "command.txt").write_text(" ".join(shlex.quote(c) for c in cmd) + "\n", encoding="utf-8")
            log = open(run_dir / "train.log", "w", encoding="utf-8")
            proc = subprocess.Popen(cmd, cwd=str(run_dir), env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append(_Job(cfg, run_dir, proc, log, time.monotonic()))
            logger.info("[pretrain] started %s (%s): %d updates; log %s", cfg.name, cfg.what, cfg.updates,
                        run_dir / "train.log")
        time.sleep(2.0)
        for job in list(active):
            rc = job.proc.poll()
            if rc is None:
                continue
            job.log.close()
            active.remove(job)
            secs = time.monotonic() - job.started
            jsonl = job.run_dir / "checkpoints" / "vitals.jsonl"
            if rc != 0 or not jsonl.exists():
                tail = (job.run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
                logger.error("[pretrain] %s FAILED (exit %s) after %.0f s:\n%s", job.cfg.name, rc, secs, "\n".join(tail))
                failures.append(job.cfg.name)
                continue
            _write_json(job.run_dir / "done.json", {"config": dataclasses.asdict(job.cfg), "seed": seed,
                                                    "seconds": secs, "finished": _now()})
            seconds[job.cfg.name] = secs
            logger.info("[pretrain] %s finished in %.0f s", job.cfg.name, secs)
            on_done(job.cfg, job.run_dir)
        if active and time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            logger.info("[pretrain] progress: %s; %d waiting", ", ".join(
                f"{j.cfg.name} {_last_update(j.run_dir / 'train.log')}/{j.cfg.updates} upd "
                f"({time.monotonic() - j.started:.0f} s)" for j in active), len(pending))
    if failures:
        logger.error("[pretrain] FAILED runs (left out of the correlations): %s; see runs/<name>/train.log",
                     failures)
    seconds["_trained_now"] = float(len(pending_names))
    return seconds


# ---------------------------------------------------------------------------------------------
# Stage 3: downstream phone classification on frozen features


def final_checkpoint(run_dir: Path, updates: int) -> Path:
    """The checkpoint saved at the last update (``checkpoint_<epoch>_<updates>.pt``)."""
    found = sorted((run_dir / "checkpoints").glob(f"checkpoint_*_{updates}.pt"))
    if found:
        return found[-1]
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    if last.exists():
        return last
    raise FileNotFoundError(f"no final checkpoint in {run_dir / 'checkpoints'}")


def _register_plugin_tasks() -> None:
    """Import the sslvitals fairseq plugin so that fairseq knows the ``*_vitals`` task names
    stored in checkpoints trained with it (current offline loaders register them themselves;
    importing the plugin first is harmless and keeps older ones working)."""
    from fairseq.utils import import_user_module

    from sslvitals.integrations.fairseq.cli import user_dir

    import_user_module(argparse.Namespace(user_dir=user_dir()))


def layer_features(checkpoint: Path, manifest: Path):
    """Per layer, the frames of every utterance of ``manifest``, their phone labels and speakers.

    One utterance per forward pass (no padding), so a frame's features do not depend on which
    utterances it was read with.

    Returns:
        ``({layer: (N, D) float32 tensor}, (N,) int64 phone ids, (N,) int64 utterance
        positions in the manifest, {position: speaker})``; the speaker is the folder of the
        utterance's manifest path (``<spk>/<utt>.wav``).
    """
    import numpy as np
    import torch

    from sslvitals.hooks import LayerTap
    from sslvitals.offline.loaders import CheckpointSpec, load_checkpoint
    from sslvitals.probe import ProbeSet

    _register_plugin_tasks()
    loaded = load_checkpoint(CheckpointSpec(str(checkpoint), "fairseq"), torch.device("cpu"))
    probe = ProbeSet.from_path(manifest, labels=manifest.with_suffix(".phn"), max_seconds=None)
    feats: dict[int, list[torch.Tensor]] = {}
    labels: list[np.ndarray] = []
    utt: list[np.ndarray] = []
    speakers: dict[int, str] = {}
    with torch.no_grad(), LayerTap(loaded.model, layers=loaded.tap_layers) as tap:
        for batch in probe.batches(30.0, max_batch=1):
            tap.clear()
            loaded.forward_fn(loaded.model, batch)
            utts = tap.utterances()
            assert batch.labels is not None
            for i, lab in enumerate(batch.labels):
                n = min([len(lab)] + [utts[ly][i].shape[0] for ly in utts])
                labels.append(np.asarray(lab[:n], dtype=np.int64))
                utt.append(np.full(n, batch.index[i], dtype=np.int64))
                speakers[int(batch.index[i])] = batch.ids[i].split("/")[0]
                for ly, xs in utts.items():
                    feats.setdefault(ly, []).append(xs[i][:n].float().cpu())
    y = torch.from_numpy(np.concatenate(labels))
    u = torch.from_numpy(np.concatenate(utt))
    return {ly: torch.cat(xs) for ly, xs in feats.items()}, y, u, speakers


def train_linear_probe(x, y, num_classes: int, *, l2: float = 1e-4, max_iter: int = 100):
    """Multinomial logistic regression on standardised features, full-batch L-BFGS.

    Args:
        x: ``(N, D)`` float32 training frames.
        y: ``(N,)`` int64 class ids.
        num_classes: Number of classes.
        l2: Weight decay on the weights.
        max_iter: L-BFGS iterations.

    Returns:
        A function mapping ``(M, D)`` frames to ``(M,)`` predicted ids.
    """
    import torch

    mean, std = x.mean(0), x.std(0) + 1e-5
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()
    return lambda z: (((z - mean) / std) @ w_ + b_).argmax(1)


def _accuracy(pred, y, silence: int = 0) -> float:
    keep = y != silence
    return float((pred[keep] == y[keep]).float().mean())


def speaker_split(utt, speakers: dict[int, str]):
    """Speaker-identification split of one corpus split, by utterance.

    Of each speaker's ``n`` utterances (manifest order; their sentences are drawn at random),
    the last ``h = max(1, round(n / 5))`` are test, the ``h`` before them valid, the rest train:
    every speaker with at least 3 utterances is in all three parts, and no utterance is in two.

    Args:
        utt: ``(N,)`` int64 utterance position of each frame.
        speakers: Utterance position -> speaker.

    Returns:
        ``(part, spk)``: ``(N,)`` int64 part per frame (0 train, 1 valid, 2 test) and ``(N,)``
        int64 speaker class per frame (speakers sorted by name).
    """
    import torch

    names = sorted(set(speakers.values()))
    by_speaker: dict[str, list[int]] = {}
    for pos in sorted(speakers):
        by_speaker.setdefault(speakers[pos], []).append(pos)
    part_of: dict[int, int] = {}
    for name, positions in by_speaker.items():
        n = len(positions)
        if n < 3:
            raise ValueError(f"speaker {name} has {n} utterance(s); speaker identification needs 3 or more")
        h = max(1, round(n / 5))
        for j, pos in enumerate(positions):
            part_of[pos] = 2 if j >= n - h else 1 if j >= n - 2 * h else 0
    part = torch.tensor([part_of[int(i)] for i in utt.tolist()], dtype=torch.int64)
    spk = torch.tensor([names.index(speakers[int(i)]) for i in utt.tolist()], dtype=torch.int64)
    return part, spk


def _probe_tasks(tr, ytr, utr, spk_tr, va, yva, te, yte, num_phones: int) -> dict[str, Any]:
    """Both downstream tasks on per-layer features (or a single ``{0: features}`` reference).

    * phone recognition: a linear phone classifier trained on the labelled ``train`` split,
      layer picked on the held-out speakers' ``valid`` split, scored on their ``probe`` split
      (frame accuracy, silence frames excluded);
    * speaker identification: a linear speaker classifier on the speech frames of ``train``,
      split by utterance (:func:`speaker_split`), layer picked on the valid utterances, scored
      on the test utterances (frame accuracy).
    """
    part, spk = speaker_split(utr, spk_tr)
    speech = ytr != 0
    n_spk = int(spk.max()) + 1
    per_layer: dict[int, dict[str, float]] = {}
    for ly in sorted(tr):
        predict = train_linear_probe(tr[ly], ytr, num_phones)
        row = {"train": _accuracy(predict(tr[ly]), ytr), "valid": _accuracy(predict(va[ly]), yva),
               "test": _accuracy(predict(te[ly]), yte)}
        sel = [speech & (part == i) for i in range(3)]
        spk_predict = train_linear_probe(tr[ly][sel[0]], spk[sel[0]], n_spk)
        for name, m in zip(("spk_train", "spk_valid", "spk_test"), sel):
            row[name] = _accuracy(spk_predict(tr[ly][m]), spk[m], silence=-1)
        per_layer[ly] = row
    best = max(per_layer, key=lambda ly: (per_layer[ly]["valid"], -ly))
    best_spk = max(per_layer, key=lambda ly: (per_layer[ly]["spk_valid"], -ly))
    return {"phone_acc": per_layer[best]["test"], "phone_layer": best,
            "speaker_acc": per_layer[best_spk]["spk_test"], "speaker_layer": best_spk,
            "speakers": n_spk, "per_layer": {str(k): v for k, v in per_layer.items()},
            "frames": {"train": int(ytr.numel()), "valid": int(yva.numel()), "test": int(yte.numel()),
                       "spk_train": int(sel[0].sum()), "spk_valid": int(sel[1].sum()), "spk_test": int(sel[2].sum())}}


def downstream_run(cfg: RunConfig, run_dir: Path, down_corpus: Path) -> dict[str, Any]:
    """Both downstream tasks from the frozen final model of one run (cached in ``downstream.json``)."""
    import torch

    from sslvitals.synth.corpus import read_phones

    out = run_dir / "downstream.json"
    if out.exists():
        return _read_json(out)
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    ckpt = final_checkpoint(run_dir, cfg.updates)
    tr, ytr, utr, spk = layer_features(ckpt, down_corpus / "train.tsv")
    va, yva, _, _ = layer_features(ckpt, down_corpus / "valid.tsv")
    te, yte, _, _ = layer_features(ckpt, down_corpus / "probe.tsv")
    res = {"run": cfg.name, "checkpoint": str(ckpt.name), "last_layer": max(tr)}
    res |= _probe_tasks(tr, ytr, utr, spk, va, yva, te, yte, len(read_phones(down_corpus / "phones.txt")))
    res["seconds"] = time.perf_counter() - t0
    _write_json(out, res)
    logger.info("[downstream] %s: phone_acc %.4f (L%d), speaker_acc %.4f (L%d); layers chosen on valid (%.0f s)",
                cfg.name, res["phone_acc"], res["phone_layer"], res["speaker_acc"], res["speaker_layer"],
                res["seconds"])
    return res


def mfcc_baseline(down_corpus: Path, out: Path) -> dict[str, Any]:
    """The same two probes on 39-dim MFCC + deltas (no pretraining): a reference point.

    Cached in ``out``.
    """
    import numpy as np
    import torch

    from sslvitals.synth import load_corpus, mfcc_targets_features
    from sslvitals.synth.corpus import read_manifest

    if out.exists():
        return _read_json(out)
    t0 = time.perf_counter()
    corpus = load_corpus(down_corpus)
    data = {}
    for split in ("train", "valid", "probe"):
        sp = corpus.split(split)
        _, items = read_manifest(sp.manifest)
        xs, ys, us = [], [], []
        for i, lab in enumerate(sp.frame_phones()):
            f = mfcc_targets_features(sp.audio(i))
            n = min(len(f), len(lab))
            xs.append(f[:n])
            ys.append(np.asarray(lab[:n], dtype=np.int64))
            us.append(np.full(n, i, dtype=np.int64))
        speakers = {i: path.split("/")[0] for i, (path, _) in enumerate(items)}
        data[split] = ({0: torch.from_numpy(np.concatenate(xs)).float()}, torch.from_numpy(np.concatenate(ys)),
                       torch.from_numpy(np.concatenate(us)), speakers)
    tr, ytr, utr, spk = data["train"]
    res = _probe_tasks(tr, ytr, utr, spk, data["valid"][0], data["valid"][1], data["probe"][0], data["probe"][1],
                       len(corpus.phones))
    res["seconds"] = time.perf_counter() - t0
    _write_json(out, res)
    logger.info("[downstream] MFCC reference: phone_acc %.4f, speaker_acc %.4f", res["phone_acc"], res["speaker_acc"])
    return res


# ---------------------------------------------------------------------------------------------
# Stage 4: correlations, figures, summary


def _records(run_dir: Path) -> list[dict]:
    from sslvitals.records import read_records

    return read_records([str(run_dir / "checkpoints" / "vitals.jsonl")])


def write_downstream_table(runs: Sequence[RunConfig], down: dict[str, dict], path: Path) -> None:
    """``run, task, score, direction`` rows for ``sslvitals correlate``."""
    import pandas as pd

    rows = [{"run": c.name, "task": t, "score": down[c.name][t], "direction": "higher"} for c in runs for t in TASKS]
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")


def summarise(mode: Mode, runs: Sequence[RunConfig], runs_root: Path, down: dict[str, dict],
              results: Path, baseline: dict[str, Any] | None = None) -> str:
    """Markdown summary (runs table + early-step comparison with the loss); also a figure."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    lines = ["## Runs", "",
             "| run | what differs | valid loss @%d | valid loss @end | phone_acc (layer) | speaker_acc (layer) |"
             % mode.early, "|---|---|---:|---:|---:|---:|"]
    for c in runs:
        recs = {r["update"]: r for r in _records(runs_root / c.name)}
        le = recs.get(mode.early, {}).get("loss")
        lf = recs.get(max(recs), {}).get("loss") if recs else None
        d = down[c.name]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {c.name} | {c.what} | {fmt(le)} | {fmt(lf)} | {d['phone_acc']:.4f} (L{d['phone_layer']}) | "
                     f"{d['speaker_acc']:.4f} (L{d['speaker_layer']}) |")
    if baseline is not None:
        lines.append(f"| (MFCC reference) | 39-dim MFCC + deltas, no pretraining | - | - | "
                     f"{baseline['phone_acc']:.4f} | {baseline['speaker_acc']:.4f} |")
    lines.append("")
    for tag, title in (("early", f"metrics at update {mode.early} (early)"), ("final", "metrics at the last update")):
        table = pd.read_csv(results / f"correlations_{tag}.csv")
        lines += [f"## Loss vs metrics: {title}", ""]
        for task, g in table.groupby("task", sort=True):
            loss = g[g["metric"] == "loss"]
            lrho = float(loss["spearman"].iloc[0]) if len(loss) else math.nan
            met = g[(g["metric"] != "loss") & g["spearman"].notna()]
            beat = met[met["spearman"].abs() > abs(lrho)] if not math.isnan(lrho) else met.iloc[:0]
            lines += [f"### {task}", "",
                      f"- validation loss: Spearman rho {lrho:+.3f} (negative = lower loss, better model)",
                      f"- (metric, layer) pairs with |rho| above the loss's: {len(beat)} of {len(met)}",
                      "", "| metric | best layer | rho at best layer | rho first layer | rho last layer |",
                      "|---|---:|---:|---:|---:|"]
            for metric, mg in met.groupby("metric", sort=True):
                top = mg.iloc[mg["spearman"].abs().argmax()]
                first = mg[mg["layer"] == mg["layer"].min()]["spearman"]
                lastv = mg[mg["layer"] == mg["layer"].max()]["spearman"]
                lines.append(f"| {metric} | L{int(top['layer'])} | {top['spearman']:+.3f} | "
                             f"{float(first.iloc[0]):+.3f} | {float(lastv.iloc[0]):+.3f} |")
            lines.append("")
            if tag == "early":
                _bar_figure(met, lrho, task, mode, results / "figures" / f"early_rho_vs_loss_{task}.png", plt)
    return "\n".join(lines) + "\n"


def _bar_figure(met, loss_rho: float, task: str, mode: Mode, path: Path, plt) -> None:
    import math

    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = sorted(met["metric"].unique())
    best = [float(met[met["metric"] == m]["spearman"].abs().max()) for m in metrics]
    last_layer = int(met["layer"].max())
    last = [float(met[(met["metric"] == m) & (met["layer"] == last_layer)]["spearman"].abs().max()) for m in metrics]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ys = range(len(metrics))
    ax.barh([y + 0.2 for y in ys], best, height=0.4, label="best layer (picked after the fact)")
    ax.barh([y - 0.2 for y in ys], last, height=0.4, label=f"last layer (L{last_layer}, fixed)")
    if loss_rho == loss_rho:
        ax.axvline(abs(loss_rho), color="k", ls="--", label=f"validation loss |rho| = {abs(loss_rho):.2f}")
    n = int(met["n"].max())
    if n > 3:  # two-sided p < 0.05 for Spearman's rho (t approximation)
        from scipy import stats

        t = float(stats.t.ppf(0.975, n - 2))
        ax.axvline(t / math.sqrt(n - 2 + t * t), color="grey", ls=":", label=f"|rho| for p < 0.05 at n = {n} (uncorrected)")
    ax.set_yticks(list(ys), metrics, fontsize=8)
    ax.set_xlabel(f"|Spearman rho| with {task}")
    ax.set_xlim(0, 1)
    ax.set_title(f"Metrics at update {mode.early} vs final {task}", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def machine() -> dict[str, Any]:
    """What this ran on."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.is_available(), "threads_per_training": 1}


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny corpora, 3 runs x 6 updates (minutes)")
    p.add_argument("--workdir", default="mini-work", help="corpora, runs and logs (reused on a rerun)")
    p.add_argument("--results", default=None, help="where tables and figures go (default WORKDIR/results)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (each single-threaded)")
    p.add_argument("--runs", default=None, help="comma-separated subset of the run names")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the correlations")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"training seed of every run (default {SEED}); the corpora and targets stay the same. "
                        f"Runs of another seed go to WORKDIR/runs_seed<N>, so seeds share one work directory")
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = SMOKE if args.smoke else FULL
    runs = list(mode.runs)
    if args.runs:
        wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
        unknown = sorted(set(wanted) - {r.name for r in runs})
        if unknown:
            raise SystemExit(f"unknown run(s) {unknown}; choose from {[r.name for r in runs]}")
        runs = [r for r in runs if r.name in wanted]
    work = Path(args.workdir).resolve()
    results = Path(args.results).resolve() if args.results else work / "results"
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(work / "run.log")])
    for noisy in ("faiss", "matplotlib", "fairseq", "sslvitals"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    started = _now()
    timings: dict[str, float] = {}
    logger.info("miniature (%s mode): %d runs, early step %d, work dir %s, results %s", mode.name, len(runs),
                mode.early, work, results)

    t0 = time.perf_counter()
    pre, dn = work / "corpus_pretrain", work / "corpus_downstream"
    make_corpus(pre, _corpus_params(mode, "pretrain"), jobs=2)
    make_corpus(dn, _corpus_params(mode, "downstream"), jobs=2)
    label_dirs = {t: make_targets(pre, work / "labels", t) for t in sorted({r.targets for r in runs})}
    timings["corpus_and_targets"] = time.perf_counter() - t0

    down: dict[str, dict] = {}
    t_down = [0.0]

    def on_done(cfg: RunConfig, run_dir: Path) -> None:
        t = time.perf_counter()
        down[cfg.name] = downstream_run(cfg, run_dir, dn)
        t_down[0] += time.perf_counter() - t

    t0 = time.perf_counter()
    seed_root = runs_root(work, args.seed)
    train_secs = pretrain_all(mode, runs, pre, label_dirs, seed_root, max(1, args.jobs), on_done, args.seed)
    timings["pretrain_and_downstream_wall"] = time.perf_counter() - t0
    timings["downstream_total"] = t_down[0]
    failed = [c.name for c in runs if c.name not in down]
    runs = [c for c in runs if c.name in down]
    if len(runs) < 3:
        raise SystemExit(f"only {len(runs)} run(s) finished (failed: {failed}); need 3 to correlate")

    trained_now = int(train_secs.pop("_trained_now", 0))
    baseline = mfcc_baseline(dn, work / "downstream_mfcc.json")
    t0 = time.perf_counter()
    jsonls = [str(seed_root / c.name / "checkpoints" / "vitals.jsonl") for c in runs]
    ds_csv = results / "downstream.csv"
    write_downstream_table(runs, down, ds_csv)
    _write_json(results / "downstream_per_layer.json", {c.name: down[c.name] for c in runs})
    clog = work / "correlate.log"
    for tag, step in (("early", str(mode.early)), ("final", "last")):
        _run_cli(_sslvitals_cmd() + ["correlate", *jsonls, str(ds_csv), "--step", step, "--n-boot", str(args.n_boot),
                                     "--seed", "0", "--out", str(results / f"correlations_{tag}")], clog)
    figs = results / "figures"
    figs.mkdir(exist_ok=True)
    _run_cli(_sslvitals_cmd() + ["plot", *jsonls, "--downstream", str(ds_csv), "--step", str(mode.early),
                                 "--metrics", "inertia,davies_bouldin,rankme_t,effective_rank,pnmi,cca_phone",
                                 "--out", str(figs / "mini"), "--kinds", "updates,scatter"], clog)
    summary = summarise(mode, runs, seed_root, down, results, baseline)
    timings["correlate_plot_summary"] = time.perf_counter() - t0
    timings["total_wall"] = time.perf_counter() - t_all
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "recipes/paper/mini/run.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    info = {"mode": mode.name, "command": command, "started": started, "finished": _now(),
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "train_seconds_per_run": {k: round(v, 1) for k, v in train_secs.items()},
            "failed_runs": failed, "seed": args.seed, "machine": machine(), "early_step": mode.early, "sizes": dataclasses.asdict(mode) | {"runs": None},
            "runs": [dataclasses.asdict(r) for r in runs]}
    info["mfcc_reference"] = baseline
    previous = results / "run_info.json"
    if trained_now == 0 and previous.exists():
        # nothing was trained in this invocation: keep the timing of the run that did the work
        old_info = _read_json(previous)
        if old_info.get("mode") == mode.name and old_info.get("seed", SEED) == args.seed \
                and old_info.get("seconds", {}).get("total_wall", 0) > timings["total_wall"]:
            for key in ("command", "started", "finished", "seconds", "train_seconds_per_run"):
                info[key] = old_info[key]
            info["regenerated"] = {"command": command, "at": _now(), "seconds": round(timings["total_wall"], 1)}
            timings["total_wall"] = float(old_info["seconds"]["total_wall"])
            started, command = info["started"], info["command"]
    _write_json(results / "run_info.json", info)
    head = (f"# sslvitals paper miniature: {mode.name} mode\n\n"
            f"- command: `{command}`\n- started {started}, finished {info['finished']}, "
            f"wall time {timings['total_wall'] / 60:.1f} min\n"
            f"- machine: {info['machine']['cpu_count']} CPU cores, no GPU, Python {info['machine']['python']}, "
            f"torch {info['machine']['torch']}; each training single-threaded, {args.jobs} at once\n"
            f"- training seed {args.seed}; early step: update {mode.early}; downstream: linear probes on frozen final "
            "features: phone frame accuracy on held-out speakers (silence excluded), speaker identification frame "
            "accuracy on held-out utterances; each at the layer chosen on its validation split\n"
            + (f"- tables regenerated from the finished runs at {info['regenerated']['at']} "
               f"(`{info['regenerated']['command']}`, {info['regenerated']['seconds']:.0f} s, nothing retrained)\n"
               if "regenerated" in info else "")
            + (f"- failed runs, left out: {', '.join(failed)}\n" if failed else "") + "\n")
    (results / "summary.md").write_text(head + summary, encoding="utf-8")
    logger.info("done in %.1f min; results in %s", timings["total_wall"] / 60, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
