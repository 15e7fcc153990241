"""Tools of the full-scale paper recipe (recipes/paper/full/) that can run without LibriSpeech."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "recipes" / "paper" / "full"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"paper_full_{name}", FULL / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_librispeech(tmp_path):
    """A LibriSpeech-shaped tree: train-clean-100/<spk>/<chapter>/<utt>.flac, 2-6 s each."""
    sf = pytest.importorskip("soundfile")
    root = tmp_path / "LibriSpeech"
    rng = np.random.default_rng(0)
    for spk in (19, 26, 27):
        for ch in (1, 2):
            d = root / "train-clean-100" / str(spk) / str(ch)
            d.mkdir(parents=True)
            for u in range(4):
                sf.write(d / f"{spk}-{ch}-{u:04d}.flac",
                         (0.1 * rng.standard_normal(16000 * (2 + u))).astype("float32"), 16000)
    (root / "dev-clean").mkdir()
    return root


def _run_probe(root: Path, out: Path, *extra: str) -> str:
    r = subprocess.run([sys.executable, str(FULL / "make_probe.py"), str(root), "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return (out / "probe.tsv").read_text()


def test_make_probe_is_deterministic_and_rebuilds_from_the_list(fake_librispeech, tmp_path):
    a = _run_probe(fake_librispeech, tmp_path / "a", "--hours", "0.01")
    b = _run_probe(fake_librispeech, tmp_path / "b", "--hours", "0.01")
    assert a == b
    lines = a.splitlines()
    assert Path(lines[0]) == fake_librispeech.resolve()
    entries = [ln.split("\t") for ln in lines[1:]]
    total = sum(int(n) for _, n in entries) / 16000
    assert 36 <= total < 36 + 6, "stops at the first file that reaches the target"
    assert all(rel.startswith("train-clean-100/") for rel, _ in entries)
    c = _run_probe(fake_librispeech, tmp_path / "c", "--from-list", str(tmp_path / "a" / "probe_files.txt"))
    assert c == a
    d = _run_probe(fake_librispeech, tmp_path / "d", "--hours", "0.01", "--seed", "1")
    assert d != a, "another seed draws another probe"


def test_make_probe_order_does_not_depend_on_directory_listing(fake_librispeech):
    mod = _load("make_probe")
    files = mod.list_flac(fake_librispeech, "train-clean-100")
    assert files == sorted(files) and len(files) == 24
    first = mod.draw(files, fake_librispeech, 0.005, 0)
    again = mod.draw(list(reversed(files))[::-1], fake_librispeech, 0.005, 0)
    assert first == again


def test_make_probe_rejects_a_missing_listed_file(fake_librispeech, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("train-clean-100/19/1/does-not-exist.flac\n")
    r = subprocess.run([sys.executable, str(FULL / "make_probe.py"), str(fake_librispeech), "--out",
                        str(tmp_path / "o"), "--from-list", str(lst)], capture_output=True, text=True)
    assert r.returncode != 0 and "missing" in (r.stderr + r.stdout)


def test_strip_state_maps_wrapper_tasks_and_drops_vitals():
    omegaconf = pytest.importorskip("omegaconf")
    mod = _load("strip_vitals")
    cfg = omegaconf.OmegaConf.create({"task": {"_name": "hubert_pretraining_vitals", "data": "x",
                                               "vitals": {"enabled": True, "k": 8}},
                                      "model": {"_name": "hubert"}})
    state = {"cfg": cfg, "model": {}}
    assert mod.strip_state(state) is True
    assert state["cfg"].task._name == "hubert_pretraining"
    assert "vitals" not in state["cfg"].task and state["cfg"].task.data == "x"
    assert mod.strip_state(state) is False, "a stock checkpoint is left as it is"


def test_collect_wer_reads_fairseq_wer_files(tmp_path):
    mod = _load("collect_wer")
    for run, wer in (("it1_a", 12.5), ("it1_b", 9.25)):
        d = tmp_path / "finetune" / run / "decode" / "test-other"
        d.mkdir(parents=True)
        (d / "wer").write_text(f"WER: {wer}\nerr / num_ref_words = 1 / 8\n")
    out = tmp_path / "ds.csv"
    assert mod.main([str(tmp_path), "--out", str(out), "--subsets", "test-other"]) == 0
    import pandas as pd

    ds = pd.read_csv(out)
    assert ds.to_dict("records") == [
        {"run": "it1_a", "task": "wer_test_other", "score": 12.5, "direction": "lower"},
        {"run": "it1_b", "task": "wer_test_other", "score": 9.25, "direction": "lower"},
    ]


def test_paper_configs_are_complete():
    yaml = pytest.importorskip("yaml")
    names = sorted(p.stem for p in (FULL / "fairseq" / "paper").glob("*.yaml"))
    assert len(names) >= 8
    for n in names:
        cfg = yaml.safe_load((FULL / "fairseq" / "paper" / f"{n}.yaml").read_text())
        assert cfg["checkpoint"]["keep_interval_updates"] == -1
        assert cfg["checkpoint"]["save_interval_updates"] == cfg["dataset"]["validate_interval_updates"]
        assert 50000 % cfg["checkpoint"]["save_interval_updates"] == 0, "the early step must be saved"
        assert n.startswith(("it1_", "it2_"))
        assert f"mask{int(round(cfg['model']['mask_prob'] * 100)):03d}" in n
    assert len({tuple(sorted(yaml.safe_load((FULL / 'fairseq' / 'paper' / f'{n}.yaml').read_text())['model'].items()))
                + (n[:3],) + (str(yaml.safe_load((FULL / 'fairseq' / 'paper' / f'{n}.yaml').read_text())['optimization']['lr']),)
                for n in names}) == len(names), "configurations must differ"


def test_decode_ctc_helpers_against_references():
    mod = _load("decode_ctc")
    assert mod.greedy_ctc([0, 5, 5, 0, 5, 7, 7, 0, 0], blank=0) == [5, 5, 7]
    assert mod.letters_to_words("H E L L O | W O R L D |") == ["HELLO", "WORLD"]
    editdistance = pytest.importorskip("editdistance")
    rng = np.random.default_rng(0)
    vocab = ["A", "B", "C", "D"]
    for _ in range(50):
        ref = list(rng.choice(vocab, size=rng.integers(0, 8)))
        hyp = list(rng.choice(vocab, size=rng.integers(0, 8)))
        assert mod.word_errors(ref, hyp) == editdistance.eval(ref, hyp)


_TINY = [
    "common.cpu=true", "common.fp16=false", "common.tensorboard_logdir=null",
    "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
    "distributed_training.distributed_backend=gloo", "dataset.num_workers=0", "dataset.max_tokens=160000",
    "+task.max_keep_size=160000",
]


@pytest.mark.e2e
def test_full_recipe_scripts_run_with_tiny_overrides(tmp_path):
    """pretrain.sh -> score.sh -> finetune.sh (fine-tune + decode) -> collect_wer.py on a tiny
    synthetic corpus: the full-scale commands, shrunk by overrides only."""
    import os
    import shutil

    from sslvitals.synth.espeak import espeak_available

    if not espeak_available():
        pytest.skip("eSpeak NG (libespeak-ng.so.1) is not installed: apt-get install espeak-ng libespeak-ng1")
    pytest.importorskip("fairseq")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed for the recipe scripts")
    from sslvitals.synth import make_mfcc_targets, synthesize_corpus

    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, hours=0.02, speakers=2, heldout_speakers=1, valid_minutes=0.3,
                      probe_minutes=0.4, seed=0, jobs=1, progress=False)
    make_mfcc_targets(corpus, k=16, seed=0, progress=False)
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1",
               DATA=str(corpus), LABELS_IT1=str(corpus), PROBE=str(corpus / "probe.tsv"), EXP=str(tmp_path / "exp"))

    def sh(script, *args, **extra):
        r = subprocess.run(["bash", str(FULL / script), *args], env=dict(env, **extra), cwd=str(ROOT),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    run = "it1_mask050_lr5e-4"
    sh("pretrain.sh", run, *_TINY, "task.min_sample_size=16000", "optimization.max_update=4",
       "dataset.validate_interval_updates=2", "checkpoint.save_interval_updates=2",
       "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'", "+model.encoder_layers=2",
       "+model.encoder_embed_dim=64", "+model.encoder_ffn_embed_dim=128", "+model.encoder_attention_heads=2",
       "model.final_dim=32", "task.vitals.k=8", "task.vitals.reservoir_size=1000", "task.vitals.silhouette_sample=200")
    ck = tmp_path / "exp" / "pretrain" / run / "checkpoints"
    assert {p.name for p in ck.glob("checkpoint_*_*.pt")} >= {"checkpoint_1_2.pt", "checkpoint_1_4.pt"}
    records = [json.loads(line) for line in (ck / "vitals.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [2, 4]

    sh("score.sh", run)
    import pandas as pd

    scores = pd.read_csv(tmp_path / "exp" / "scores" / f"{run}.csv")
    assert sorted(scores["step"].unique()) == [2, 4] and set(scores["run"]) == {run}
    assert "cca_mel" in set(scores["metric"])

    ft = tmp_path / "ft"
    ft.mkdir()
    for split, name in (("train", "train"), ("valid", "valid"), ("probe", "dev-other"), ("probe", "test-clean"),
                        ("probe", "test-other")):
        shutil.copy(corpus / f"{split}.tsv", ft / f"{name}.tsv")
        shutil.copy(corpus / f"{split}.ltr", ft / f"{name}.ltr")
    counts: dict[str, int] = {}
    for line in (corpus / "train.ltr").read_text().splitlines():
        for ch in line.split():
            counts[ch] = counts.get(ch, 0) + 1
    (ft / "dict.ltr.txt").write_text("".join(f"{c} {n}\n" for c, n in sorted(counts.items(), key=lambda x: -x[1])))
    sh("finetune.sh", run, *_TINY, "optimization.max_update=4", "model.freeze_finetune_updates=0",
       "dataset.validate_after_updates=0", "lr_scheduler.warmup_steps=1", "lr_scheduler.decay_steps=2",
       "model.mask_channel_prob=0", "model.mask_prob=0.1", FT_DATA=str(ft), FINAL_UPDATE="4")
    out = tmp_path / "ds.csv"
    r = subprocess.run([sys.executable, str(FULL / "collect_wer.py"), str(tmp_path / "exp"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ds = pd.read_csv(out)
    assert set(ds["task"]) == {"wer_dev_other", "wer_test_clean", "wer_test_other"}
    assert ((ds["score"] >= 0) & (ds["run"] == run) & (ds["direction"] == "lower")).all()
