"""``sslvitals demo``: the whole idea in one command, on a CPU, in about ten minutes.

Steps (each timed and logged):

1. **synth** - synthesise a labelled multi-speaker English corpus with eSpeak NG
   (:mod:`sslvitals.synth`): about one hour of train audio, a valid split for fairseq's own
   validation and a probe split (held-out speakers) with frame-level phone labels;
2. **targets** - HuBERT first-iteration targets: k-means on MFCC + deltas (``<split>.km``);
3. **train** - pretrain a tiny HuBERT with the real ``fairseq-hydra-train`` and the stock
   ``hubert_base_librispeech`` recipe shipped inside fairseq, shrunk by overrides to run on a
   CPU, with the sslvitals fairseq plugin measuring every layer on the probe at each validation;
4. **table** - print metric x layer tables, one per validation, from ``vitals.jsonl``;
5. **plot** - draw every metric against the update number, one line per layer.

Everything is written under the work directory (default ``./sslvitals-demo``), which carries a
marker file; the demo refuses to write into an existing directory without that marker.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError

__all__ = [
    "MARKER",
    "add_arguments",
    "run",
    "prepare_workdir",
    "fairseq_config_dir",
    "fairseq_train_command",
    "train_overrides",
]

logger = logging.getLogger(__name__)

#: The demo's k-means clusters: its probe is too small for the library default (1024).
DEMO_K = 100

#: File that marks a directory as a demo work directory (safe to overwrite).
MARKER = ".sslvitals-demo"
_CORPUS = "corpus"
_RUN = "run"
_LOG_LINE = re.compile(r"\]\[(train_inner|valid|train)\]\[INFO\] - (\{.*\})\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``sslvitals demo``."""
    g = parser.add_argument_group("work directory and corpus")
    g.add_argument("--workdir", default="sslvitals-demo",
                   help="where everything goes (created; must be a demo directory if it exists)")
    g.add_argument("--hours", type=float, default=1.0, help="hours of synthetic training audio")
    g.add_argument("--speakers", type=int, default=8, help="training speakers")
    g.add_argument("--heldout-speakers", type=int, default=2,
                   help="speakers used only for valid and probe (0: the training speakers)")
    g.add_argument("--valid-minutes", type=float, default=3.0, help="minutes of fairseq validation audio")
    g.add_argument("--probe-minutes", type=float, default=10.0,
                   help="minutes of probe audio the metrics are measured on")
    g.add_argument("--targets-k", type=int, default=100, help="clusters of the MFCC k-means targets")
    g.add_argument("--seed", type=int, default=0, help="seed of corpus, targets, training and metrics")
    g.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    t = parser.add_argument_group("tiny HuBERT")
    t.add_argument("--updates", type=int, default=400, help="optimizer updates")
    t.add_argument("--validations", type=int, default=4,
                   help="validations (with measurements) spread evenly over the updates")
    t.add_argument("--layers", type=int, default=4, help="transformer layers")
    t.add_argument("--dim", type=int, default=128, help="transformer width")
    t.add_argument("--conv-channels", type=int, default=64, help="channels of the conv feature extractor")
    t.add_argument("--max-tokens", type=int, default=320000, help="audio samples per batch")
    t.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    t.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for fairseq-hydra-train (repeatable)")
    v = parser.add_argument_group("measurements")
    v.add_argument("--no-vitals", action="store_true",
                   help="train without the sslvitals plugin (steps 4-5 are skipped)")
    defaults = VitalsConfig()
    v.add_argument("--vitals-k", type=int, default=DEMO_K,
                   help=f"k-means clusters of the layer metrics (the demo's 10-minute probe has about "
                   f"30,000 frames, so it uses {DEMO_K} instead of the library's {defaults.k}; the "
                   "value is recorded with every number)")
    v.add_argument("--reservoir-size", type=int, default=defaults.reservoir_size,
                   help="frames kept per layer for k-means")
    v.add_argument("--silhouette-sample", type=int, default=defaults.silhouette_sample,
                   help="frames for the silhouette score")
    v.add_argument("--metrics", default="default", help="metrics to measure (see sslvitals.config)")
    o = parser.add_argument_group("output")
    o.add_argument("--print-command", action="store_true",
                   help="prepare corpus and targets, print the fairseq command, do not train")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------------------------------
# helpers (public ones are used by tests)


def prepare_workdir(path: str | os.PathLike) -> Path:
    """Create the work directory or check that an existing one is a demo directory.

    Raises:
        SSLVitalsError: if ``path`` exists, is not empty and has no marker file.
    """
    work = Path(path).resolve()
    if work.exists():
        if not work.is_dir():
            raise SSLVitalsError(f"--workdir {work} exists and is not a directory; choose another path")
        if any(work.iterdir()) and not (work / MARKER).exists():
            raise SSLVitalsError(
                f"--workdir {work} exists and is not an sslvitals demo directory (no {MARKER} file); "
                "the demo will not write into it: choose a new --workdir or remove it yourself"
            )
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("sslvitals demo work directory; safe to delete\n", encoding="utf-8")
    return work


def fairseq_config_dir() -> Path:
    """The HuBERT pretraining configs shipped inside the installed fairseq package.

    Raises:
        SSLVitalsError: if fairseq is not installed or ships no HuBERT configs.
    """
    spec = importlib.util.find_spec("fairseq")
    if spec is None or not spec.submodule_search_locations:
        raise SSLVitalsError(
            "fairseq is not installed; install it with pip install 'sslvitals[fairseq]' or 'make install'"
        )
    for loc in spec.submodule_search_locations:
        cfg = Path(loc) / "examples" / "hubert" / "config" / "pretrain"
        if (cfg / "hubert_base_librispeech.yaml").exists():
            return cfg
    raise SSLVitalsError(
        "the installed fairseq has no examples/hubert/config/pretrain/hubert_base_librispeech.yaml; "
        "install fairseq-fixed==0.12.3.1 (it ships the examples inside the package)"
    )


def _fairseq_executable() -> str:
    local = Path(sys.executable).parent / "fairseq-hydra-train"
    if local.exists():
        return str(local)
    found = shutil.which("fairseq-hydra-train")
    if not found:
        raise SSLVitalsError(
            "fairseq-hydra-train not found next to this Python or on PATH; install fairseq with "
            "pip install 'sslvitals[fairseq]' or 'make install'"
        )
    return found


def train_overrides(args: argparse.Namespace, corpus: Path, run_dir: Path) -> list[str]:
    """Hydra overrides that shrink the stock HuBERT Base recipe to a CPU-sized model.

    Args:
        args: Parsed ``sslvitals demo`` options.
        corpus: Corpus directory (manifests, ``.km`` labels, ``dict.km.txt``).
        run_dir: Run directory (checkpoints, Hydra outputs).

    Returns:
        The override strings, vitals ones included unless ``args.no_vitals``.
    """
    if args.updates < 1 or args.validations < 1:
        raise SSLVitalsError("--updates and --validations must be >= 1")
    interval = max(1, args.updates // args.validations)
    c = int(args.conv_channels)
    conv = f"[({c},10,5)] + [({c},3,2)] * 4 + [({c},2,2)] * 2"
    heads = 4 if args.dim % 4 == 0 else 1
    ov = [
        f"hydra.run.dir={run_dir / 'hydra'}",
        f"task.data={corpus}",
        f"task.label_dir={corpus}",
        'task.labels=["km"]',
        "model.label_rate=50",
        "task.min_sample_size=16000",
        f"common.seed={args.seed}",
        "common.cpu=true",
        "common.fp16=false",
        "common.log_format=json",
        "common.log_interval=5",
        "common.tensorboard_logdir=null",
        "distributed_training.distributed_world_size=1",
        "distributed_training.nprocs_per_node=1",
        "distributed_training.distributed_backend=gloo",
        "dataset.num_workers=0",
        f"dataset.max_tokens={args.max_tokens}",
        # fairseq's batch_by_size drops a last batch smaller than this multiple (default 8):
        # with 1 nothing is dropped, and a valid set of fewer than 8 utterances still works
        "dataset.required_batch_size_multiple=1",
        f"dataset.validate_interval_updates={interval}",
        "dataset.validate_interval=100000",
        f"optimization.max_update={args.updates}",
        f"optimization.lr=[{args.lr}]",
        f"lr_scheduler.warmup_updates={max(1, args.updates // 10)}",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}",
        "checkpoint.save_interval_updates=0",
        f"model.conv_feature_layers='{conv}'",
        f"+model.encoder_layers={args.layers}",
        f"+model.encoder_embed_dim={args.dim}",
        f"+model.encoder_ffn_embed_dim={4 * args.dim}",
        f"+model.encoder_attention_heads={heads}",
        f"model.final_dim={max(16, args.dim // 2)}",
        "model.encoder_layerdrop=0.0",
    ]
    if not args.no_vitals:
        try:
            from sslvitals.integrations.fairseq.cli import plugin_overrides

            ov += plugin_overrides("hubert")
        except ImportError as exc:
            raise SSLVitalsError(
                f"the sslvitals fairseq plugin is unavailable ({exc}); run with --no-vitals"
            ) from exc
        ov += [
            f"+task.vitals.probe={corpus / 'probe.tsv'}",
            f"+task.vitals.k={args.vitals_k}",
            f"+task.vitals.reservoir_size={args.reservoir_size}",
            f"+task.vitals.silhouette_sample={args.silhouette_sample}",
            f"+task.vitals.metrics={args.metrics}",
            f"+task.vitals.seed={args.seed}",
        ]
    return ov + list(args.override)


def fairseq_train_command(args: argparse.Namespace, corpus: Path, run_dir: Path) -> list[str]:
    """The full ``fairseq-hydra-train`` command line (a list of arguments, no shell)."""
    return [
        _fairseq_executable(),
        "--config-dir", str(fairseq_config_dir()),
        "--config-name", "hubert_base_librispeech",
        *train_overrides(args, corpus, run_dir),
    ]


def _shell_quote(cmd: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)


# ---------------------------------------------------------------------------------------------
# steps


def _step_corpus(args: argparse.Namespace, work: Path) -> tuple[Path, bool]:
    """Synthesise the corpus, or reuse one made with the same parameters (returns True then)."""
    from sslvitals.synth import synthesize_corpus
    from sslvitals.synth.espeak import espeak_available

    corpus = work / _CORPUS
    wanted = dict(hours=args.hours, speakers=args.speakers, heldout_speakers=args.heldout_speakers,
                  valid_minutes=args.valid_minutes, probe_minutes=args.probe_minutes, seed=args.seed)
    meta_path, targets_path = corpus / "corpus.json", corpus / "targets.json"
    if meta_path.exists() and targets_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tmeta = json.loads(targets_path.read_text(encoding="utf-8"))
        if meta.get("params") == wanted and tmeta.get("k") == args.targets_k and tmeta.get("seed") == args.seed:
            logger.info("[1/5 synth] reusing the corpus in %s (same parameters)", corpus)
            return corpus, True
    if not espeak_available():
        raise SSLVitalsError(
            "the eSpeak NG library (libespeak-ng.so.1) is missing; install it with "
            "'apt-get install espeak-ng libespeak-ng1' (as root) or 'make install'"
        )
    logger.info("[1/5 synth] synthesising %.2f h of speech into %s", args.hours, corpus)
    synthesize_corpus(corpus, **wanted, jobs=args.jobs, force=True, progress=not args.no_progress)
    return corpus, False


def _step_targets(args: argparse.Namespace, corpus: Path) -> dict:
    from sslvitals.synth import make_mfcc_targets

    logger.info("[2/5 targets] MFCC k-means targets, k=%d", args.targets_k)
    report = make_mfcc_targets(corpus, k=args.targets_k, seed=args.seed, progress=not args.no_progress)
    return report.quality


def _train(args: argparse.Namespace, cmd: list[str], run_dir: Path) -> list[dict]:
    """Run fairseq, stream its log to ``run_dir/train.log``, show progress; return valid stats."""
    from tqdm.auto import tqdm

    log_path = run_dir / "train.log"
    env = dict(os.environ)
    env.setdefault("HYDRA_FULL_ERROR", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    valid_stats: list[dict] = []
    tail: deque[str] = deque(maxlen=40)
    bar = tqdm(total=args.updates, desc="fairseq updates", unit="upd", disable=args.no_progress,
               dynamic_ncols=True)
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1,
        cwd=str(run_dir),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            m = _LOG_LINE.search(line)
            if not m:
                if "sslvitals" in line and ("WARNING" in line or "ERROR" in line):
                    logger.warning("fairseq: %s", line.strip()[:300])
                continue
            kind, payload = m.groups()
            try:
                stats = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if kind == "train_inner":
                n = int(float(stats.get("num_updates", 0)))
                bar.update(max(0, n - bar.n))
                bar.set_postfix(loss=stats.get("loss"), refresh=False)
                if args.no_progress:
                    logger.info("update %d: loss %s", n, stats.get("loss"))
            elif kind == "valid":
                valid_stats.append(stats)
                n = int(float(stats.get("valid_num_updates", 0) or 0))
                n_vitals = sum(1 for k in stats if "vitals/" in k)
                bar.clear()
                logger.info("[3/5 train] validation at update %d: valid loss %s%s", n,
                            stats.get("valid_loss"),
                            f", {n_vitals} vitals values logged" if n_vitals else "")
        rc = proc.wait()
    bar.close()
    if rc != 0:
        logger.error("fairseq-hydra-train failed (exit %d); last lines of %s:\n%s", rc, log_path,
                     "\n".join(tail))
        raise SSLVitalsError(
            f"fairseq-hydra-train exited with status {rc}; see {log_path} (rerun with --no-vitals to "
            "check training alone)"
        )
    return valid_stats


def _records_frame(jsonl: Path) -> tuple[list[dict], "object"]:
    """The validation records of ``jsonl`` and the same as a long-format pandas frame."""
    from sslvitals.offline.io import records_to_frame
    from sslvitals.records import read_records

    records = read_records([str(jsonl)])
    return records, records_to_frame(records, source=str(jsonl))


def _print_tables(records: list[dict], frame) -> None:
    from sslvitals.offline.table import format_table

    out = sys.stdout
    out.write("\n## sslvitals demo: metrics per layer at each validation\n\n")
    out.write("| update | valid loss | seconds for the metrics |\n|---|---|---|\n")
    for rec in records:
        loss = rec.get("loss")
        secs = rec.get("seconds")
        out.write(f"| {rec.get('update')} | {'-' if loss is None else f'{loss:.4g}'} | "
                  f"{'-' if secs is None else f'{secs:.1f}'} |\n")
    out.write("\n" + format_table(frame, digits=4) + "\n")
    out.flush()


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every attempt at INFO
    work = prepare_workdir(args.workdir)
    logger.info("sslvitals demo in %s", work)

    t0 = time.perf_counter()
    corpus, reused = _step_corpus(args, work)
    timings["synth"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if reused:
        logger.info("[2/5 targets] reusing the MFCC k-means targets (k=%d)", args.targets_k)
        quality = json.loads((corpus / "targets.json").read_text(encoding="utf-8")).get("quality")
    else:
        quality = _step_targets(args, corpus)
    timings["targets"] = time.perf_counter() - t0
    if quality and "probe" in quality:
        q = quality["probe"]
        logger.info("[2/5 targets] MFCC k-means vs synthesiser phones on the probe: PNMI %.3f, "
                    "phone purity %.3f, cluster purity %.3f", q["pnmi"], q["phone_purity"],
                    q["cluster_purity"])

    run_dir = work / _RUN
    cmd = fairseq_train_command(args, corpus, run_dir)
    if args.print_command:
        sys.stdout.write(_shell_quote(cmd) + "\n")
        return 0
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: fairseq would otherwise resume checkpoint_last.pt
    run_dir.mkdir(parents=True)
    (run_dir / "command.txt").write_text(_shell_quote(cmd) + "\n", encoding="utf-8")
    logger.info("[3/5 train] fairseq-hydra-train: tiny HuBERT (%d layers x %d, conv %d ch), %d updates, "
                "%d validations; log: %s", args.layers, args.dim, args.conv_channels, args.updates,
                args.validations, run_dir / "train.log")
    t0 = time.perf_counter()
    _train(args, cmd, run_dir)
    timings["train"] = time.perf_counter() - t0

    if not args.no_vitals:
        jsonl = run_dir / "checkpoints" / "vitals.jsonl"
        if not jsonl.exists():
            raise SSLVitalsError(
                f"training finished but {jsonl} was not written: the sslvitals plugin measured "
                f"nothing; see {run_dir / 'train.log'}"
            )
        t0 = time.perf_counter()
        records, frame = _records_frame(jsonl)
        _print_tables(records, frame)
        timings["table"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        from sslvitals.offline.plot import plot_metric_vs_update

        for noisy in ("fontTools", "matplotlib"):  # PDF font subsetting logs every glyph at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
        written = plot_metric_vs_update(frame, work / "vitals")
        timings["plot"] = time.perf_counter() - t0
        logger.info("[5/5 plot] wrote %s", ", ".join(written))
    timings["total"] = time.perf_counter() - t_all
    (work / "timings.json").write_text(json.dumps(
        {k: round(v, 2) for k, v in timings.items()}, indent=2) + "\n", encoding="utf-8")
    logger.info("wall time per step: %s", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return 0
