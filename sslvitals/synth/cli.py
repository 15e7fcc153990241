"""``sslvitals synth``: synthesise a labelled corpus and its MFCC k-means targets."""
from __future__ import annotations

import argparse
import logging
import os
import time

from sslvitals.errors import SSLVitalsError

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``sslvitals synth``."""
    parser.add_argument("out", help="output directory (new, or an earlier corpus with --force)")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of audio in the train split")
    parser.add_argument("--speakers", type=int, default=8, help="number of training speakers")
    parser.add_argument(
        "--heldout-speakers", type=int, default=2,
        help="extra speakers used only in the valid and probe splits (0: valid/probe are new "
        "sentences from the training speakers)",
    )
    parser.add_argument("--valid-minutes", type=float, default=5.0, help="minutes in the valid split")
    parser.add_argument("--probe-minutes", type=float, default=10.0,
                        help="minutes in the probe split (the audio the vitals are measured on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of speakers and sentences")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--targets-k", type=int, default=100,
                        help="clusters of the MFCC k-means targets (<split>.km); 0 skips them")
    parser.add_argument("--force", action="store_true", help="replace an existing corpus in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``sslvitals synth``; returns the exit status."""
    from sslvitals.synth.corpus import synthesize_corpus
    from sslvitals.synth.espeak import espeak_available

    if not espeak_available():
        raise SSLVitalsError(
            "the eSpeak NG library (libespeak-ng.so.1) is not installed; run "
            "'apt-get install espeak-ng libespeak-ng1' (as root) or 'make install'"
        )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every attempt at INFO
    t0 = time.perf_counter()
    corpus = synthesize_corpus(
        args.out, hours=args.hours, speakers=args.speakers, heldout_speakers=args.heldout_speakers,
        valid_minutes=args.valid_minutes, probe_minutes=args.probe_minutes, seed=args.seed,
        jobs=args.jobs, force=args.force, progress=not args.no_progress,
    )
    t1 = time.perf_counter()
    logger.info("synthesis took %.1f s", t1 - t0)
    if args.targets_k > 0:
        from sslvitals.synth.targets import make_mfcc_targets

        report = make_mfcc_targets(corpus.root, k=args.targets_k, seed=args.seed,
                                   progress=not args.no_progress)
        q = report.quality["probe"]
        logger.info(
            "MFCC k-means targets (k=%d) written in %.1f s; probe PNMI %.3f, phone purity %.3f, "
            "cluster purity %.3f", args.targets_k, report.seconds, q["pnmi"], q["phone_purity"],
            q["cluster_purity"],
        )
    logger.info("corpus in %s (fairseq manifests %s/{train,valid,probe}.tsv, Kaldi dirs %s)",
                corpus.root, corpus.root, corpus.kaldi_dir)
    return 0
