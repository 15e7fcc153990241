"""Word-level measures through the fairseq plugin's measurement path (FairseqVitals + the
fairseq forward + VitalsMonitor), on s3prl's port of MR-HuBERT: word alignments named by
``vitals.probe_words``, values at every layer (the 25 Hz middle included) in the logged
results and the JSON-lines record, and the same numbers for a padded and a one-by-one pass."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")
hubert_model = pytest.importorskip("s3prl.upstream.multires_hubert.hubert_model")

from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.keys import metric_key  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tinydata  # noqa: E402

WORD_METRICS = ("mi_word", "nmi_word", "cca_word")


def _words(corpus: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for line in (corpus / "valid.tsv").read_text().splitlines()[1:]:
        rel, n = line.split("\t")
        uid, t, dur = Path(rel).stem, 0.0, int(n) / 16000
        while t < dur - 0.08:
            end = min(dur, t + float(rng.uniform(0.06, 0.2)))
            rows.append(f"{uid}\t{t:.3f}\t{end:.3f}\t{rng.choice(['x', 'y', 'z', 'w'])}")
            t = end + 0.02
    path = corpus / "alignments" / "valid_words.tsv"
    path.parent.mkdir()
    path.write_text("\n".join(rows) + "\n")
    return path


def _mr_hubert():
    torch.manual_seed(0)
    mcfg = hubert_model.MultiresHubertConfig(
        label_rate=50, label_rate_ratios=[1, 2], encoder_layers=2, encoder_embed_dim=64,
        encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
        final_dim=32, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    )
    return hubert_model.MultiresHubertModel(
        mcfg, hubert_model.MultiresHubertPretrainingConfig(label_rate=50), [list(range(8))] * 2)


def test_word_measures_through_the_plugin_path_on_mr_hubert(tmp_path: Path) -> None:
    from sslvitals.integrations.fairseq.runner import FairseqVitals

    corpus = tinydata.make_corpus(tmp_path / "corpus", n_train=2, n_valid=10)
    words = _words(corpus)
    model = _mr_hubert()
    results = {}
    for batch_seconds in (60.0, 0.5):
        cfg = VitalsConfig(enabled=True, k=6, reservoir_size=2000, silhouette_sample=0,
                           metrics="pnmi," + ",".join(WORD_METRICS), probe_words=str(words),
                           word_vocab_size=3, batch_seconds=batch_seconds)
        save = tmp_path / f"save{batch_seconds}"
        vitals = FairseqVitals(cfg, data=str(corpus), save_dir=str(save))
        assert vitals.probe.has_words
        assert vitals.check_model(model) == list(range(7))
        out = vitals.on_begin_validation(model, step=1, epoch=1)
        vitals.finish_validation({"loss": 2.0})
        record = json.loads((save / "vitals.jsonl").read_text().splitlines()[0])
        for layer in range(7):
            for m in WORD_METRICS:
                key = metric_key(m, layer)
                assert math.isfinite(out[key]), key
                assert record["metrics"][key] == out[key], key
        assert 0 < out[metric_key("nmi_word", 3)] < 1  # the 25 Hz middle block
        results[batch_seconds] = out
    for key, value in results[60.0].items():
        if key.startswith("vitals/") and key != "vitals/seconds":
            assert results[0.5][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_best_checkpoint_metric_on_a_word_measure_needs_word_alignments(tmp_path: Path) -> None:
    from sslvitals.errors import SSLVitalsError
    from sslvitals.integrations.fairseq.runner import FairseqVitals

    corpus = tinydata.make_corpus(tmp_path / "corpus", n_train=2, n_valid=4)
    cfg = VitalsConfig(enabled=True, metrics="rankme,cca_word")
    with pytest.raises(SSLVitalsError, match="needs word alignments"):
        FairseqVitals(cfg, data=str(corpus), save_dir=str(tmp_path),
                      best_checkpoint_metric="vitals/cca_word/L2")
    cfg = VitalsConfig(enabled=True, metrics="rankme,cca_word", probe_words=str(_words(corpus)))
    FairseqVitals(cfg, data=str(corpus), save_dir=str(tmp_path),
                  best_checkpoint_metric="vitals/cca_word/L2")
