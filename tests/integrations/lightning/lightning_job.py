"""One real Lightning training run with the VitalsCallback (run as a script by the tests).

Lightning's DDP launcher starts the other ranks by running this script again, so the tests
start it in a subprocess. Each rank appends what its trainer held after every validation to
``<out>/rank<r>.jsonl`` (the ``vitals/...`` values of ``trainer.callback_metrics`` and the
step), and rank 0 writes ``<out>/result.json`` (the best checkpoint of the ``ModelCheckpoint``
that watches a vitals key, the log folder).

Usage: ``python lightning_job.py --out DIR --probe PROBE.tsv [--devices 2] [--max-steps 8]
[--every-n 1] [--ckpt-path CKPT] [--monitor vitals/rankme/L2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyssl import METRICS, RankSlice, lightning_module, waveforms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--every-n", type=int, default=1)
    ap.add_argument("--ckpt-path", default=None)
    ap.add_argument("--monitor", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from sslvitals.integrations.lightning import VitalsCallback

    out = Path(args.out)

    class Dump(Callback):
        """Write the vitals values this rank's trainer holds after each validation."""

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            values = {k: float(v) for k, v in trainer.callback_metrics.items()
                      if k.startswith("vitals/")}
            with open(out / f"rank{trainer.global_rank}.jsonl", "a") as fh:
                fh.write(json.dumps({"step": trainer.global_step, "values": values}) + "\n")

    # 8 training clips: 2 steps per epoch at a global batch of 4 (4 per process alone, 2 per
    # process with two), so one and two processes see the same batches; validation each epoch
    global_batch = 4
    train = DataLoader(TensorDataset(waveforms(8, seed=1)), batch_size=global_batch // args.devices,
                       sampler=RankSlice(8))
    valid = DataLoader(TensorDataset(waveforms(4, seed=2)), batch_size=2, shuffle=False)
    vitals = VitalsCallback(probe=args.probe, layers="all", metrics=METRICS, k=4, kmeans_iters=10,
                            reservoir_size=20000, silhouette_sample=0, backend="torch",
                            every_n_validations=args.every_n, batch_seconds=2.0, seed=0)
    callbacks = [vitals, Dump()]
    if args.monitor:
        best = ModelCheckpoint(dirpath=out / "best", filename="{step}", monitor=args.monitor,
                               mode="max", save_top_k=1)
        callbacks.append(best)
    else:
        best = None
    every = ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", save_top_k=-1, every_n_epochs=1)
    callbacks.append(every)
    trainer = Trainer(
        accelerator="cpu", devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.max_steps, logger=CSVLogger(str(out), name="csv", version=0),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=1, log_every_n_steps=1, use_distributed_sampler=False,
    )
    trainer.fit(lightning_module(), train, valid, ckpt_path=args.ckpt_path)
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks
    if trainer.global_rank == 0:
        result = {"log_dir": log_dir, "global_step": trainer.global_step,
                  "world_size": trainer.world_size}
        if best is not None:
            result["best_model_path"] = best.best_model_path
            result["best_model_score"] = float(best.best_model_score)
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    main()
