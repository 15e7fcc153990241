"""One process of the two-process gloo test of the plugin's measurement (run as a script).

fairseq 0.12's CPU multi-process training cannot run HuBERT / wav2vec 2.0 (its
``all_gather_list`` allocates a CUDA buffer), so the sharded path is tested here around
:class:`sslvitals.integrations.fairseq.runner.FairseqVitals`: each process builds the same
fairseq ``HubertModel`` (seeded random weights), measures its shard of the probe, and writes the
numbers plus the utterances it fed to the model to ``<out>/rank<r>.json``.

Usage: ``python dist_worker.py CORPUS OUT RANK WORLD INIT_FILE``; the one-process reference
calls :func:`measure_once` directly.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def build_tiny_hubert(seed: int = 0, extractor_mode: str = "default") -> torch.nn.Module:
    """A 2-layer, 64-dim fairseq HubertModel with seeded random weights."""
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    torch.manual_seed(seed)
    cfg = HubertConfig(
        label_rate=50.0, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
        encoder_attention_heads=2, final_dim=32, conv_pos=16, extractor_mode=extractor_mode,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    )
    dictionary = Dictionary()
    for c in range(8):
        dictionary.add_symbol(str(c))
    task_cfg = HubertPretrainingConfig(data="unused", labels=["km"], label_rate=50.0)
    return HubertModel(cfg, task_cfg, [dictionary]).eval()


def measure_once(corpus: str, out: Path, rank: int = 0) -> dict:
    """Measure the probe of ``corpus`` once with the plugin; write and return what happened."""
    from sslvitals.config import VitalsConfig
    from sslvitals.integrations.fairseq.runner import FairseqVitals

    cfg = VitalsConfig(enabled=True, k=8, kmeans_iters=10, reservoir_size=4000,
                       silhouette_sample=0, batch_seconds=5.0)
    vitals = FairseqVitals(cfg, data=corpus, save_dir=str(out))
    model = build_tiny_hubert()
    vitals.check_model(model)
    seen: list[str] = []
    inner = vitals.forward_fn

    def counting_forward(m: torch.nn.Module, batch: object) -> object:
        seen.extend(batch.ids)  # type: ignore[attr-defined]
        return inner(m, batch)

    vitals.forward_fn = counting_forward
    results = vitals.on_begin_validation(model, step=7, epoch=1)
    record = vitals.finish_validation({"loss": 1.5})
    report = {"results": results, "ids": seen, "wrote_record": record is not None}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    return report


def main(argv: list[str]) -> None:
    corpus, out, rank, world, init_file = argv[1], Path(argv[2]), int(argv[3]), int(argv[4]), argv[5]
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
    measure_once(corpus, out, rank)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv)
