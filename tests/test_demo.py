"""``sslvitals demo``: work-directory safety, the fairseq command, and an end-to-end smoke run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sslvitals.cli import build_parser, main
from sslvitals.demo import MARKER, prepare_workdir, train_overrides
from sslvitals.errors import SSLVitalsError


def _args(*extra: str):
    return build_parser().parse_args(["demo", *extra])


def test_refuses_a_directory_that_is_not_a_demo_directory(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(SSLVitalsError, match="not an sslvitals demo directory"):
        prepare_workdir(mine)
    assert main(["demo", "--workdir", str(mine)]) == 2  # the CLI reports it, exit status 2
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]


def test_accepts_new_empty_and_marked_directories(tmp_path):
    assert (prepare_workdir(tmp_path / "new") / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_workdir(empty) / MARKER).is_file()
    (empty / "leftover.txt").write_text("from an earlier demo")
    assert prepare_workdir(empty) == empty.resolve()  # marked: reused


def test_overrides_shrink_the_stock_recipe_and_add_the_plugin(tmp_path):
    args = _args("--updates", "300", "--validations", "3", "--layers", "3", "--dim", "96",
                 "--conv-channels", "32", "--vitals-k", "50", "--override", "common.seed=7")
    ov = train_overrides(args, tmp_path / "corpus", tmp_path / "run")
    kv = dict(o.split("=", 1) for o in ov)
    assert kv["dataset.validate_interval_updates"] == "100"
    assert kv["optimization.max_update"] == "300"
    assert kv["+model.encoder_layers"] == "3" and kv["+model.encoder_embed_dim"] == "96"
    assert kv["model.conv_feature_layers"] == "'[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'"
    assert kv["task.labels"] == '["km"]' and kv["model.label_rate"] == "50"
    assert kv["task.data"] == kv["task.label_dir"] == str(tmp_path / "corpus")
    assert kv["task._name"] == "hubert_pretraining_vitals"
    assert kv["+task.vitals.enabled"] == "true" and kv["+task.vitals.k"] == "50"
    assert kv["+task.vitals.probe"] == str(tmp_path / "corpus" / "probe.tsv")
    assert Path(kv["common.user_dir"]).is_dir()
    assert ov[-1] == "common.seed=7"  # user overrides come last and win
    plain = train_overrides(_args("--no-vitals"), tmp_path / "c", tmp_path / "r")
    assert not any("vitals" in o or "user_dir" in o for o in plain)
    with pytest.raises(SSLVitalsError, match="--updates"):
        train_overrides(_args("--updates", "0"), tmp_path, tmp_path)


@pytest.mark.e2e
def test_demo_end_to_end_small(tmp_path):
    """The real pipeline at a toy size: espeak corpus, MFCC targets, fairseq-hydra-train with
    the plugin, table and plot (about a minute and a half on two busy cores)."""
    pytest.importorskip("fairseq")
    from sslvitals.synth.espeak import espeak_available

    if not espeak_available():
        pytest.skip("eSpeak NG library is not installed")
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "sslvitals.cli", "demo", "--workdir", str(work), "--no-progress",
           "--hours", "0.02", "--speakers", "2", "--heldout-speakers", "1", "--valid-minutes", "0.2",
           "--probe-minutes", "0.25", "--targets-k", "16", "--updates", "4", "--validations", "2",
           "--layers", "2", "--dim", "64", "--conv-channels", "32", "--vitals-k", "8",
           "--reservoir-size", "1000", "--silhouette-sample", "300", "--jobs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in
               (work / "run" / "checkpoints" / "vitals.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [2, 4]
    keys = set(records[-1]["metrics"])
    for metric in ("rankme", "inertia", "pnmi", "phone_purity"):
        assert {f"vitals/{metric}/L{i}" for i in range(3)} <= keys
    assert records[-1]["probe"]["labels"] is True
    out = proc.stdout
    assert "| metric | L0 | L1 | L2 |" in out and "| pnmi |" in out
    assert "step 2" in out and "step 4" in out
    assert (work / "vitals_updates.png").stat().st_size > 1000
    timings = json.loads((work / "timings.json").read_text())
    assert set(timings) >= {"synth", "targets", "train", "table", "plot", "total"}
    targets = json.loads((work / "corpus" / "targets.json").read_text())
    assert 0 < targets["quality"]["probe"]["pnmi"] < 1
    # a second call with the same corpus options reuses corpus and targets
    again = subprocess.run(cmd + ["--print-command"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the corpus" in again.stderr
    assert "fairseq-hydra-train" in again.stdout and "hubert_base_librispeech" in again.stdout
