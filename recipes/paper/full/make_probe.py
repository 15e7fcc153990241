#!/usr/bin/env python
"""Draw the paper recipe's probe set: one hour of LibriSpeech train-clean-100, seeded.

The choice depends only on the sorted list of file names and the seed, so everybody with a
LibriSpeech copy gets the same probe:

1. list every ``*.flac`` under ``<root>/train-clean-100`` by its path relative to ``<root>``,
   sorted as strings;
2. shuffle that list with ``numpy.random.default_rng(seed).permutation``;
3. take files in that order until ``--hours`` of audio are reached (the last file is kept).

It writes a fairseq manifest (first line: the LibriSpeech root; then ``relative/path<TAB>samples``)
and a plain list of the chosen relative paths (``probe_files.txt``). Once one person has run
it, commit that list; everybody else rebuilds the identical manifest from it with
``--from-list`` (no re-draw, and a check that the files and their lengths match).

Usage::

    python recipes/paper/full/make_probe.py /data/LibriSpeech --out data/probe
    python recipes/paper/full/make_probe.py /data/LibriSpeech --out data/probe \\
        --from-list recipes/paper/full/probe_files.txt
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("make_probe")


def list_flac(root: Path, subset: str) -> list[str]:
    """Relative paths (POSIX, from ``root``) of every ``.flac`` in ``root/subset``, sorted."""
    base = root / subset
    if not base.is_dir():
        raise SystemExit(f"{base} does not exist: give the LibriSpeech folder that holds {subset}/")
    files = sorted(p.relative_to(root).as_posix() for p in base.rglob("*.flac"))
    if not files:
        raise SystemExit(f"no .flac files under {base}")
    return files


def num_samples(path: Path) -> tuple[int, int]:
    """``(frames, sample_rate)`` from the file header."""
    import soundfile as sf

    info = sf.info(str(path))
    return int(info.frames), int(info.samplerate)


def draw(files: list[str], root: Path, hours: float, seed: int) -> list[tuple[str, int]]:
    """The seeded prefix of a permutation of ``files`` that reaches ``hours`` of 16 kHz audio."""
    order = np.random.default_rng(seed).permutation(len(files))
    target = hours * 3600.0
    chosen: list[tuple[str, int]] = []
    total = 0.0
    for i in order:
        rel = files[int(i)]
        n, sr = num_samples(root / rel)
        if sr != 16000:
            raise SystemExit(f"{rel} has sample rate {sr}, expected 16000")
        chosen.append((rel, n))
        total += n / sr
        if total >= target:
            break
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="LibriSpeech folder (the one that contains train-clean-100/)")
    p.add_argument("--out", required=True, help="output folder: probe.tsv and probe_files.txt")
    p.add_argument("--subset", default="train-clean-100", help="subset to draw from")
    p.add_argument("--hours", type=float, default=1.0, help="hours of audio (default 1)")
    p.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    p.add_argument("--from-list", default=None, help="rebuild from a committed probe_files.txt instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    root = Path(args.root).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_list:
        rels = [ln.strip() for ln in Path(args.from_list).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        chosen = []
        for rel in rels:
            if not (root / rel).exists():
                raise SystemExit(f"{rel} from {args.from_list} is missing under {root}")
            n, sr = num_samples(root / rel)
            if sr != 16000:
                raise SystemExit(f"{rel} has sample rate {sr}, expected 16000")
            chosen.append((rel, n))
    else:
        files = list_flac(root, args.subset)
        logger.info("%d files in %s; drawing %.2f h with seed %d", len(files), args.subset, args.hours, args.seed)
        chosen = sorted(draw(files, root, args.hours, args.seed))
    with open(out / "probe.tsv", "w", encoding="utf-8") as f:
        f.write(f"{root}\n")
        for rel, n in chosen:
            f.write(f"{rel}\t{n}\n")
    with open(out / "probe_files.txt", "w", encoding="utf-8") as f:
        f.write(f"# {args.subset}, {args.hours} h, seed {args.seed}: make_probe.py (sslvitals paper recipe)\n")
        for rel, _ in chosen:
            f.write(rel + "\n")
    secs = sum(n for _, n in chosen) / 16000
    speakers = len({rel.split("/")[1] for rel, _ in chosen if rel.count("/") >= 2})
    logger.info("probe: %d utterances, %.1f min, %d speakers -> %s", len(chosen), secs / 60, speakers, out / "probe.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
