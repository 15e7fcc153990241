"""The paper miniature (recipes/paper/mini/run.py): unit checks and an end-to-end smoke run.

The smoke run drives the real chain (eSpeak NG corpora, MFCC targets, ``fairseq-hydra-train``
with the sslvitals plugin, frozen-feature phone classifier, ``sslvitals correlate`` / ``plot``)
at a size of a few minutes, and checks that every output exists with the expected columns
and every run in it; it does not check what the numbers are.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "paper" / "mini" / "run.py"


def _load_run_module():
    spec = importlib.util.spec_from_file_location("paper_mini_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


mini = _load_run_module()


def test_merge_overrides_replaces_keys_and_keeps_plus():
    base = ["a.b=1", "+model.encoder_layers=4", "c=3"]
    out = mini.merge_overrides(base, ["a.b=2", "model.encoder_layers=6", "+d=4"])
    assert out == ["a.b=2", "+model.encoder_layers=6", "c=3", "+d=4"]


def test_full_runs_differ_and_share_the_early_step():
    names = [r.name for r in mini.RUNS]
    assert len(names) >= 16 and len(set(names)) == len(names)
    # every configuration differs from the reference in at least one field
    ref = mini.RUNS[0]
    fields = ("targets", "mask_prob", "lr", "updates", "dim", "layers")
    for r in mini.RUNS[1:]:
        assert any(getattr(r, f) != getattr(ref, f) for f in fields), r.name
    for mode in (mini.FULL, mini.SMOKE):
        assert all(r.updates % mode.early == 0 and r.updates > mode.early for r in mode.runs)


def test_train_command_overrides(tmp_path):
    pytest.importorskip("fairseq")
    cfg = mini.RunConfig("x", "test", mask_prob=0.3, lr=1e-3, updates=4 * mini.FULL.early, dim=64, targets="km25")
    cmd = mini.train_command(mini.FULL, cfg, tmp_path / "corpus", tmp_path / "labels", tmp_path / "run")
    overrides = cmd[5:]
    keys = [mini._override_key(o) for o in overrides]
    assert len(keys) == len(set(keys)), "duplicate Hydra override"
    for want in (f"checkpoint.save_interval_updates={mini.FULL.early}", "checkpoint.keep_interval_updates=-1",
                 "model.mask_prob=0.3", f"task.label_dir={tmp_path / 'labels'}", f"optimization.max_update={4 * mini.FULL.early}",
                 f"dataset.validate_interval_updates={mini.FULL.early}", "+model.encoder_embed_dim=64",
                 "task._name=hubert_pretraining_vitals", "+task.vitals.enabled=true"):
        assert want in overrides, want


def test_linear_probe_separates_separable_classes():
    import torch

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 4
    y = torch.arange(400) % 4
    x = centres[y] + torch.randn(400, 8, generator=g)
    predict = mini.train_linear_probe(x, y, 4)
    assert mini._accuracy(predict(x), y, silence=-1) > 0.95
    # shuffled labels cannot be learned beyond chance on fresh points
    xt = centres[y] + torch.randn(400, 8, generator=g)
    predict_shuffled = mini.train_linear_probe(x, y[torch.randperm(400, generator=g)], 4)
    assert mini._accuracy(predict_shuffled(xt), y, silence=-1) < 0.5


@pytest.mark.e2e
def test_mini_smoke_end_to_end(tmp_path):
    from sslvitals.synth.espeak import espeak_available

    if not espeak_available():
        pytest.skip("eSpeak NG (libespeak-ng.so.1) is not installed: apt-get install espeak-ng libespeak-ng1")
    pytest.importorskip("fairseq")
    work = tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--workdir", str(work), "--n-boot", "50"]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    import pandas as pd

    runs = [r.name for r in mini.SMOKE.runs]
    res = work / "results"
    ds = pd.read_csv(res / "downstream.csv")
    assert list(ds.columns) == ["run", "task", "score", "direction"]
    assert sorted(ds["run"].unique()) == sorted(runs)
    assert set(ds["task"]) == set(mini.TASKS)
    for tag in ("early", "final"):
        table = pd.read_csv(res / f"correlations_{tag}.csv")
        for col in ("task", "direction", "metric", "layer", "n", "spearman", "spearman_lo", "spearman_hi",
                    "spearman_p", "kendall", "kendall_p"):
            assert col in table.columns, col
        assert "loss" in set(table["metric"]), "the validation loss must be compared too"
        assert {"inertia", "davies_bouldin", "rankme_t", "effective_rank", "pnmi"} <= set(table["metric"])
        assert (table["n"] == len(runs)).all(), "every run must enter every correlation"
        assert (res / f"correlations_{tag}.md").read_text().count("| rank | metric |") == len(mini.TASKS)
    summary = (res / "summary.md").read_text()
    for r in runs:
        assert f"| {r} |" in summary
    for fig in ("early_rho_vs_loss_phone_acc.png", "early_rho_vs_loss_speaker_acc.png", "mini_updates.png",
                "mini_scatter_phone_acc.png", "mini_scatter_speaker_acc.png"):
        assert (res / "figures" / fig).stat().st_size > 0, fig
    assert "(MFCC reference)" in summary
    info = json.loads((res / "run_info.json").read_text())
    assert info["mode"] == "smoke" and info["failed_runs"] == []
    assert 0.0 <= info["mfcc_reference"]["phone_acc"] <= 1.0
    assert 0.0 <= info["mfcc_reference"]["speaker_acc"] <= 1.0
    # early and final checkpoints and measurements of every run
    for r in mini.SMOKE.runs:
        ck = work / "runs" / r.name / "checkpoints"
        assert list(ck.glob(f"checkpoint_*_{mini.SMOKE.early}.pt")) and list(ck.glob(f"checkpoint_*_{r.updates}.pt"))
        updates = [json.loads(line)["update"] for line in (ck / "vitals.jsonl").read_text().splitlines()]
        assert mini.SMOKE.early in updates and r.updates in updates

    # a rerun resumes: no training is started again
    proc2 = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    log = proc2.stderr + proc2.stdout
    assert "[pretrain] started" not in log
    assert log.count("already finished; skipped") == len(runs)
    info2 = json.loads((res / "run_info.json").read_text())
    assert info2["seconds"] == info["seconds"] and "regenerated" in info2, "the first run's timing is kept"

    # the full recipe's strip_vitals.py makes these checkpoints loadable without the plugin
    final = sorted((work / "runs" / mini.SMOKE.runs[0].name / "checkpoints").glob(f"checkpoint_*_{mini.SMOKE.runs[0].updates}.pt"))[-1]
    stock = tmp_path / "stock.pt"
    strip = ROOT / "recipes" / "paper" / "full" / "strip_vitals.py"
    r = subprocess.run([sys.executable, str(strip), str(final), "--out", str(stock)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = ("import sys; from sslvitals.integrations.fairseq.checkpoint import load_fairseq_checkpoint; "
            "m = load_fairseq_checkpoint(sys.argv[1]); print('LOADED', m.kind, m.step)")
    r = subprocess.run([sys.executable, "-c", code, str(stock)], capture_output=True, text=True, timeout=300)
    assert f"LOADED hubert {mini.SMOKE.runs[0].updates}" in r.stdout, r.stderr[-2000:]

    # another training seed in the same work directory (corpora and targets reused), then the
    # seed-noise report over both seeds
    res1 = tmp_path / "results_seed1"
    proc3 = subprocess.run(cmd + ["--seed", "1", "--results", str(res1)], cwd=str(ROOT), capture_output=True,
                           text=True, timeout=600)
    assert proc3.returncode == 0, proc3.stdout[-3000:] + proc3.stderr[-3000:]
    log3 = proc3.stderr + proc3.stdout
    assert "[corpus] synthesising" not in log3 and log3.count("[pretrain] started") == len(runs)
    assert json.loads((res1 / "run_info.json").read_text())["seed"] == 1
    for r in mini.SMOKE.runs:
        done1 = json.loads((work / "runs_seed1" / r.name / "done.json").read_text())
        assert done1["seed"] == 1
        assert "common.seed=1" in (work / "runs_seed1" / r.name / "command.txt").read_text()
    noise = tmp_path / "noise"
    seeds_script = ROOT / "recipes" / "paper" / "mini" / "seeds.py"
    proc4 = subprocess.run([sys.executable, str(seeds_script), "--workdir", str(work), "--results", str(res), str(res1),
                            "--out", str(noise), "--n-boot", "20"], cwd=str(ROOT), capture_output=True, text=True,
                           timeout=300)
    assert proc4.returncode == 0, proc4.stdout[-3000:] + proc4.stderr[-3000:]
    by_seed = pd.read_csv(noise / "rho_by_seed.csv")
    assert {"rho_seed0", "rho_seed1", "sd", "same_sign"} <= set(by_seed.columns)
    assert set(by_seed["at"]) == {"early", "final"}
    pooled = pd.read_csv(noise / "pooled_early.csv")
    assert (pooled["n"] == 2 * len(runs)).all() and "spearman_q" in pooled.columns
    means = pd.read_csv(noise / "means_early.csv")
    assert (means["n"] == len(runs)).all()
    down = pd.read_csv(noise / "downstream_by_seed.csv")
    assert sorted(down["run"].unique()) == sorted(runs) and {"seed0", "seed1"} <= set(down.columns)
    text = (noise / "noise.md").read_text()
    assert "## Pooled" in text and "## Seed-averaged" in text and "## Signal" in text
    spread = pd.read_csv(noise / "spread.csv")
    assert set(spread["task"]) == set(mini.TASKS) and (spread["configs"] == len(runs)).all()
    verdict = pd.read_csv(noise / "beats_loss.csv")
    assert set(verdict["task"]) == set(mini.TASKS)
    assert set(verdict["verdict"]) <= {"beats the loss", "worse than the loss", "not distinguishable"}
    for fig in ("rho_seed_agreement.png", "rho_by_seed_last_layer_phone_acc.png", "rho_by_seed_last_layer_speaker_acc.png",
                "downstream_spread.png"):
        assert (noise / "figures" / fig).stat().st_size > 0, fig


def test_phone_and_random_targets(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "phones.txt").write_text("sil 0\naa 1\nbb 2\n")
    lines = {"train": ["0 1 1 2", "2 2 0"], "valid": ["1 0"], "probe": ["0 0 2"]}
    for split, ls in lines.items():
        (corpus / f"{split}.phn").write_text("\n".join(ls) + "\n")
        (corpus / f"{split}.tsv").write_text("audio_root\n")
    phone = mini.make_targets(corpus, tmp_path / "labels", "phone")
    assert (phone / "train.km").read_text().splitlines() == lines["train"]
    assert (phone / "dict.km.txt").read_text().splitlines() == ["0 1", "1 1", "2 1"]
    assert (phone / "train.tsv").resolve() == (corpus / "train.tsv").resolve()
    rand = mini.make_targets(corpus, tmp_path / "labels", "random7")
    for split, ls in lines.items():
        got = [ln.split() for ln in (rand / f"{split}.km").read_text().splitlines()]
        assert [len(g) for g in got] == [len(ln.split()) for ln in ls], "one random target per frame"
        assert all(0 <= int(v) < 7 for g in got for v in g)
    assert len((rand / "dict.km.txt").read_text().splitlines()) == 7
    again = mini.make_targets(corpus, tmp_path / "labels", "random7")
    assert (again / "train.km").read_text() == (rand / "train.km").read_text()
    with pytest.raises(ValueError, match="unknown targets"):
        mini.make_targets(corpus, tmp_path / "labels", "kmeans")


def test_no_masking_predicts_unmasked_frames():
    assert mini.mask_overrides(0.8) == ["model.mask_prob=0.8"]
    ov = mini.mask_overrides(0.0)
    assert "criterion.pred_masked_weight=0.0" in ov and "criterion.pred_nomask_weight=1.0" in ov


def test_speaker_split_keeps_every_speaker_in_every_part():
    import torch

    speakers = {i: ("s1" if i % 2 else "s0") for i in range(20)}
    utt = torch.tensor([i for i in range(20) for _ in range(3)])
    part, spk = mini.speaker_split(utt, speakers)
    for name, cls in (("s0", 0), ("s1", 1)):
        mine = sorted(i for i, s in speakers.items() if s == name)
        parts = {int(part[utt == i][0]) for i in mine}
        assert parts == {0, 1, 2}
        assert [int(part[utt == i][0]) for i in mine] == [0] * 6 + [1] * 2 + [2] * 2
        assert bool((spk[torch.isin(utt, torch.tensor(mine))] == cls).all())
    with pytest.raises(ValueError, match="3 or more"):
        mini.speaker_split(torch.tensor([0, 1]), {0: "a", 1: "a"})
