"""The layer-wise recipe (recipes/layerwise/layerwise.py) renders its figure from
``sslvitals score`` output of tiny fairseq HuBERT and MR-HuBERT checkpoints, with word-level
measures from a word alignment beside the probe and MR-HuBERT's layers at their rates."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import artifacts
from conftest import SCORE_KW
from sslvitals.cli import main
from sslvitals.offline.io import read_score_file
from sslvitals.offline.score import score_checkpoints

RECIPE = Path(__file__).parents[2] / "recipes" / "layerwise" / "layerwise.py"
MEASURES = "cca_mel,cca_phone,cca_word,mi_phone,mi_word"


def _recipe():
    spec = importlib.util.spec_from_file_location("layerwise_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _probe_with_words(folder: Path) -> Path:
    probe = artifacts.make_probe(folder, n_utts=8, seed=7)
    rng = np.random.default_rng(7)
    rows = []
    for line in probe.read_text().splitlines()[1:]:
        rel, n = line.split("\t")
        uid, t, dur = rel[:-4], 0.02, int(n) / 16000
        while t < dur - 0.1:
            end = min(dur, t + float(rng.uniform(0.08, 0.2)))
            rows.append(f"{Path(uid).name}\t{t:.3f}\t{end:.3f}\t{rng.choice(['a', 'b', 'c', 'd'])}")
            t = end
    (folder / "probe.words.tsv").write_text("\n".join(rows) + "\n")
    return probe


def test_layerwise_figure_from_scores_of_hubert_and_mr_hubert(tmp_path):
    pytest.importorskip("fairseq")
    pytest.importorskip("s3prl")
    probe = _probe_with_words(tmp_path / "probe")
    hub = artifacts.make_fairseq_hubert(tmp_path / "hubert" / "checkpoint_1_100.pt")
    mr = artifacts.make_fairseq_multires_hubert(tmp_path / "mr_hubert" / "checkpoint_1_70.pt")
    out = tmp_path / "scores.csv"
    kw = dict(SCORE_KW, k=3)
    table, failures = score_checkpoints([str(hub), str(mr)], str(probe), str(out),
                                        metrics=MEASURES, **kw)
    assert failures == []
    assert set(MEASURES.split(",")) == set(table["metric"])
    assert table["value"].notna().all()
    # the command line, with the alignments named and the 'layerwise' set: the same numbers
    moved = tmp_path / "elsewhere.tsv"
    moved.write_text((probe.parent / "probe.words.tsv").read_text())
    (probe.parent / "probe.words.tsv").unlink()
    rc = main(["score", str(hub), str(mr), "--probe", str(probe), "--words", str(moved),
               "--metrics", "layerwise,cca_mel", "--k", "3", "--reservoir-size", "300",
               "--silhouette-sample", "0", "--cca-frames", "2000", "--no-progress",
               "--out", str(tmp_path / "cli.csv")])
    assert rc == 0
    cli = read_score_file(tmp_path / "cli.csv")
    assert set(cli["metric"]) == set(MEASURES.split(",")) | {"nmi_word"}
    key = ["checkpoint", "metric", "layer"]
    both = table.merge(cli, on=key, suffixes=("", "_cli"))
    assert len(both) == len(table) and (both["value"] == both["value_cli"]).all()

    fig = tmp_path / "fig" / "layerwise.png"
    lines = _recipe().main([str(out), "--out", str(fig)])
    assert fig.is_file() and fig.stat().st_size > 10_000
    by_label = {ln.label: ln for ln in lines}
    assert set(by_label) == {"hubert", "mr_hubert"}
    # the HuBERT runs at 50 Hz throughout; MR-HuBERT's middle block at 25 Hz
    assert set(by_label["hubert"].rates.values()) == {50.0}
    assert by_label["mr_hubert"].rates == {0: 50.0, 1: 50.0, 2: 25.0, 3: 50.0}
    for ln in lines:
        assert set(ln.values) == set(MEASURES.split(","))
        for metric, vals in ln.values.items():
            assert all(math.isfinite(v) for v in vals.values()), (ln.label, metric)
    # without rates and by relative depth, from the same file
    lines2 = _recipe().main([str(out), "--out", str(tmp_path / "d.pdf"), "--rates", "none",
                             "--x", "depth", "--metrics", "cca_word,mi_word"])
    assert (tmp_path / "d.pdf").is_file() and all(not ln.rates for ln in lines2)
