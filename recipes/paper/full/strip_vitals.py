#!/usr/bin/env python
"""Copy fairseq checkpoints trained with the sslvitals plugin so that stock fairseq loads them.

A run trained with ``task._name=hubert_pretraining_vitals`` stores that task name and a
``task.vitals`` node in every checkpoint. fairseq tools that rebuild the task from the
checkpoint (HuBERT fine-tuning through ``model.w2v_path``, ``simple_kmeans/dump_hubert_feature.py``,
``sslvitals score``) then need the plugin imported. This script writes copies whose task is the
stock one (``hubert_pretraining``, ``audio_pretraining``, ``multires_hubert_pretraining``) with
the ``vitals`` node removed; the weights, optimizer history and extra state are untouched. For a
folder, the run's ``vitals.jsonl`` is copied beside the copies, so ``sslvitals score`` on them
uses the settings and probe the run logged with.

Usage::

    python recipes/paper/full/strip_vitals.py exp/pretrain/it1_mask080/checkpoints \\
        --out exp/pretrain/it1_mask080/stock
    python recipes/paper/full/strip_vitals.py ckpt.pt --out ckpt_stock.pt

Checkpoints are read with torch's safe loader and the allow-list of the classes fairseq
checkpoints hold (``sslvitals.integrations.fairseq.safe_load``); nothing else is unpickled.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("strip_vitals")

#: Wrapper task -> stock task.
STOCK_TASK = {
    "hubert_pretraining_vitals": "hubert_pretraining",
    "audio_pretraining_vitals": "audio_pretraining",
    "multires_hubert_pretraining_vitals": "multires_hubert_pretraining",
}


def strip_state(state: dict) -> bool:
    """Rewrite the task section of a loaded checkpoint dict in place.

    Returns:
        True if something was changed (the checkpoint used an sslvitals wrapper task).
    """
    from omegaconf import OmegaConf, open_dict

    cfg = state.get("cfg")
    if cfg is None:
        args = state.get("args")
        name = getattr(args, "task", None)
        if name in STOCK_TASK:
            args.task = STOCK_TASK[name]
            if hasattr(args, "vitals"):
                delattr(args, "vitals")
            return True
        return False
    task = cfg.get("task")
    if task is None or task.get("_name") not in STOCK_TASK:
        return False
    if OmegaConf.is_config(task):
        with open_dict(task):
            task._name = STOCK_TASK[task._name]
            if "vitals" in task:
                del task["vitals"]
    else:
        # fairseq stores the config as plain containers; keep it so (torch.load with
        # weights_only=True, the default of recent torch, rejects pickled OmegaConf objects)
        task["_name"] = STOCK_TASK[task["_name"]]
        task.pop("vitals", None)
    return True


def strip_file(src: Path, dst: Path) -> bool:
    """Write ``dst``, a copy of ``src`` with the stock task; returns whether anything changed."""
    from sslvitals.integrations.fairseq.safe_load import load_fairseq_file

    state = load_fairseq_file(src)
    changed = strip_state(state)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a checkpoint .pt or a folder of checkpoint_*.pt files")
    p.add_argument("--out", required=True, help="output file (for a file) or folder (for a folder)")
    p.add_argument("--all", action="store_true",
                   help="with a folder: also copy checkpoint_last.pt and checkpoint_best.pt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    src, out = Path(args.src), Path(args.out)
    if src.is_dir():
        files = sorted(src.glob("checkpoint*.pt"))
        if not args.all:
            files = [f for f in files if f.name not in ("checkpoint_last.pt", "checkpoint_best.pt")]
        if not files:
            logger.error("no checkpoint*.pt in %s", src)
            return 1
        pairs = [(f, out / f.name) for f in files]
    else:
        pairs = [(src, out)]
    for s, d in pairs:
        if d.exists() and d.stat().st_mtime >= s.stat().st_mtime:
            logger.info("%s is up to date", d)
            continue
        changed = strip_file(s, d)
        logger.info("%s -> %s%s", s, d, "" if changed else " (no sslvitals task inside; copied as is)")
    records = src / "vitals.jsonl"
    if src.is_dir() and records.is_file():
        # the run's records travel with the copies: `sslvitals score` on them then takes the
        # run's settings and probe from it, and reproduces the logged values
        import shutil

        shutil.copyfile(records, out / "vitals.jsonl")
        logger.info("%s -> %s", records, out / "vitals.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
