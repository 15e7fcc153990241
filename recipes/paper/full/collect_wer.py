#!/usr/bin/env python
"""Gather the WERs written by finetune.sh into the downstream table of ``sslvitals correlate``.

Reads ``<exp>/finetune/<run>/decode/<subset>/wer`` (first line ``WER: <value>``, written by
fairseq's ``examples/speech_recognition/new/infer.py`` with ``decoding.unique_wer_file=false``)
and writes ``run,task,score,direction`` rows, task ``wer_<subset>``, direction ``lower``.

Usage::

    python recipes/paper/full/collect_wer.py exp/paper --out exp/paper/downstream.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_wer(path: Path) -> float:
    """The number after ``WER:`` on the first line of ``path``."""
    first = path.read_text(encoding="utf-8").splitlines()[0].split()
    if len(first) < 2 or first[0] != "WER:":
        raise SystemExit(f"{path}: expected 'WER: <value>' on the first line, got {' '.join(first)!r}")
    return float(first[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exp", help="experiment root (the EXP of the scripts)")
    p.add_argument("--out", required=True, help="downstream CSV to write")
    p.add_argument("--subsets", default="dev-other,test-clean,test-other", help="decoded subsets")
    args = p.parse_args(argv)
    rows = []
    missing = []
    for run_dir in sorted((Path(args.exp) / "finetune").iterdir()):
        for subset in args.subsets.split(","):
            f = run_dir / "decode" / subset / "wer"
            if f.exists():
                rows.append({"run": run_dir.name, "task": f"wer_{subset.replace('-', '_')}",
                             "score": read_wer(f), "direction": "lower"})
            else:
                missing.append(str(f))
    if missing:
        print("missing (not decoded yet):\n  " + "\n  ".join(missing), file=sys.stderr)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["run", "task", "score", "direction"])
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
