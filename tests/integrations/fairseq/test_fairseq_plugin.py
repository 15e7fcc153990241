"""Unit tests of the fairseq plugin: config mirror, forward pass, user dir, sharded measurement.

These run in seconds and use real fairseq objects (registries, HubertModel, OmegaConf nodes);
the end-to-end runs through ``fairseq-hydra-train`` are in ``test_fairseq_e2e.py``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fairseq")

from sslvitals.config import ALL_METRICS, LABEL_METRICS, VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.integrations.fairseq import cli as fcli  # noqa: E402
from sslvitals.integrations.fairseq.config import (  # noqa: E402
    FairseqVitalsConfig,
    VITALS_FIELDS,
    config_table,
    default_vitals_node,
    vitals_config_from_node,
)
from sslvitals.integrations.fairseq.forward import make_forward_fn, normalize_waveforms  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tinydata  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinydata.make_corpus(tmp_path_factory.mktemp("fairseq_unit_corpus"), n_train=2, n_valid=10)


# ---------------------------------------------------------------------- config mirror
def test_mirror_has_every_vitals_field_with_same_default_and_help() -> None:
    from fairseq.dataclass import FairseqDataclass

    assert issubclass(FairseqVitalsConfig, FairseqDataclass)
    mirror = {f.name: f for f in dataclasses.fields(FairseqVitalsConfig) if f.name != "_name"}
    source = {f.name: f for f in dataclasses.fields(VitalsConfig)}
    assert list(mirror) == list(source) == list(VITALS_FIELDS)
    for name, f in source.items():
        assert mirror[name].default == f.default, name
        assert mirror[name].metadata["help"] == f.metadata["help"], name
    assert default_vitals_node() == VitalsConfig().to_dict()
    table = config_table()
    assert table.count("\n") == len(VITALS_FIELDS) + 1
    assert "| `probe_labels` | `null` |" in table and "| `enabled` | `false` |" in table


@pytest.mark.parametrize("family,task", [("hubert", "hubert_pretraining_vitals"),
                                         ("wav2vec2", "audio_pretraining_vitals"),
                                         ("multires_hubert", "multires_hubert_pretraining_vitals")])
def test_recipe_yaml_lists_every_option_with_its_default(family: str, task: str) -> None:
    from omegaconf import OmegaConf

    path = HERE.parents[2] / "recipes" / "fairseq" / "sslvitals" / f"{family}.yaml"
    # the shipped file is what the generator prints today (regenerate it when VitalsConfig changes)
    assert path.read_text() == fcli.recipe_yaml(family)
    node = OmegaConf.load(path)
    assert node.task._name == task
    expected = dict(default_vitals_node(), enabled=True)
    assert OmegaConf.to_container(node.task.vitals) == expected
    assert list(node.task.vitals) == list(VITALS_FIELDS)
    assert vitals_config_from_node(node.task.vitals).enabled


def test_unknown_key_lists_valid_options() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.create({"enabled": True, "probes": "x.tsv"})
    with pytest.raises(SSLVitalsError) as err:
        vitals_config_from_node(node)
    msg = str(err.value)
    assert "task.vitals.probes" in msg
    for name in VITALS_FIELDS:
        assert name in msg


def test_values_are_type_checked_and_lists_accepted() -> None:
    with pytest.raises(SSLVitalsError, match=r"task\.vitals\.k"):
        vitals_config_from_node({"k": "many"})
    with pytest.raises(SSLVitalsError, match="unknown metric 'bogus'"):
        vitals_config_from_node({"metrics": "rankme,bogus"})
    cfg = vitals_config_from_node({"enabled": True, "layers": [0, -1], "metrics": ["rankme", "pnmi"],
                                   "k": "16", "max_probe_seconds": 60})
    assert cfg.layers == "0,-1" and cfg.metrics == "rankme,pnmi"
    assert cfg.k == 16 and isinstance(cfg.k, int) and cfg.max_probe_seconds == 60.0
    assert vitals_config_from_node(None) == VitalsConfig()


# ---------------------------------------------------------------------- forward
def test_normalize_matches_layer_norm_per_utterance() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1000, 640, 17])
    wav = torch.zeros(3, 1000)
    refs = []
    for i, n in enumerate(lengths.tolist()):
        x = torch.randn(n, generator=g) * (i + 1) + i
        wav[i, :n] = x
        refs.append(torch.nn.functional.layer_norm(x, x.shape))  # what fairseq's datasets do
    out = normalize_waveforms(wav, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[i, :n], refs[i], rtol=1e-5, atol=1e-5)
        assert torch.all(out[i, n:] == 0)


@pytest.mark.parametrize("extractor_mode", ["default", "layer_norm"])
def test_forward_fn_gives_each_utterance_its_own_features(corpus: Path, extractor_mode: str) -> None:
    """Through LayerTap, a padded probe batch yields, per utterance and layer, the frames that
    fairseq's ``extract_features(output_layer=i)`` gives the utterance alone, unmasked."""
    from dist_worker import build_tiny_hubert

    from sslvitals.batching import choose_policy
    from sslvitals.hooks import LayerTap
    from sslvitals.probe import ProbeSet, frame_count

    model = build_tiny_hubert(extractor_mode=extractor_mode)
    probe = ProbeSet.from_path(corpus / "valid.tsv")
    batch = next(iter(probe.batches(60.0)))
    assert batch.wav.shape[0] > 2 and int(batch.lengths.min()) < batch.wav.shape[1]
    fwd = make_forward_fn(normalize=False)
    # HuBERT's frame mask keeps a frame of padding in either mode: one utterance per forward
    policy = choose_policy(model, fwd)
    assert not policy.padded, policy.describe()

    def run_probe(tap: LayerTap) -> dict[int, list[torch.Tensor]]:
        # what the monitor feeds this model
        parts = list(policy.apply([batch]))
        out: dict[int, list[torch.Tensor]] = {}
        for part in parts:
            tap.clear()
            tap.set_input_lengths(part.lengths)  # as the monitor does
            fwd(model, part)
            for layer, utts in tap.utterances().items():
                out.setdefault(layer, []).extend(u.clone() for u in utts)
        return out

    with LayerTap(model) as tap:
        first = run_probe(tap)
        second = run_probe(tap)
    for layer in (0, 1, 2):
        assert len(first[layer]) == batch.wav.shape[0]
        for a, b in zip(first[layer], second[layer]):
            torch.testing.assert_close(a, b)  # no random masking, no dropout
    with torch.no_grad():
        for i in (0, batch.wav.shape[0] - 1):
            n = int(batch.lengths[i])
            for layer in (1, 2):
                alone, _ = model.extract_features(batch.wav[i:i + 1, :n], padding_mask=None,
                                                  mask=False, output_layer=layer)
                got = first[layer][i]
                assert got.shape[0] == alone.shape[1] == frame_count(n)
                torch.testing.assert_close(got, alone[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- user dir + registry
def test_user_dir_registers_wrapper_tasks() -> None:
    from argparse import Namespace

    from fairseq import utils
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    path = fcli.user_dir()
    assert os.path.isabs(path) and os.path.basename(path) == fcli.PLUGIN_PACKAGE
    # the folder holding the plugin must not expose any other top-level module
    assert sorted(os.listdir(os.path.dirname(path))) in (
        ["__init__.py", fcli.PLUGIN_PACKAGE], ["__init__.py", "__pycache__", fcli.PLUGIN_PACKAGE],
    )
    utils.import_user_module(Namespace(user_dir=path))
    for name, stock in (("hubert_pretraining_vitals", "hubert_pretraining"),
                        ("audio_pretraining_vitals", "audio_pretraining")):
        assert issubclass(TASK_REGISTRY[name], TASK_REGISTRY[stock])
        dc = TASK_DATACLASS_REGISTRY[name]
        assert issubclass(dc, TASK_DATACLASS_REGISTRY[stock])
        assert dc().vitals == default_vitals_node()
    from sslvitals.integrations.fairseq import tasks

    assert ("multires_hubert_pretraining_vitals" in TASK_REGISTRY) == (
        "multires_hubert_pretraining" in TASK_REGISTRY
    )
    assert tasks.stock_task_name("audio_pretraining_vitals") == "audio_pretraining"
    # importing the plugin again (as fairseq does in every worker) registers nothing twice
    utils.import_user_module(Namespace(user_dir=path))


def test_cli_prints_user_dir_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    from sslvitals.cli import main

    assert main(["fairseq-user-dir"]) == 0
    assert capsys.readouterr().out.strip() == fcli.user_dir()
    assert main(["fairseq-user-dir", "--overrides", "wav2vec2"]) == 0
    assert capsys.readouterr().out.split() == [
        f"common.user_dir={fcli.user_dir()}", "task._name=audio_pretraining_vitals",
        "+task.vitals.enabled=true",
    ]


def test_setup_task_reads_root_config_and_disables_from_checkpoint(corpus: Path) -> None:
    from omegaconf import OmegaConf, open_dict

    from fairseq import tasks
    import sslvitals.integrations.fairseq.tasks  # noqa: F401  (registers the wrappers)

    root = OmegaConf.create({
        "checkpoint": {"save_dir": str(corpus / "ck"), "best_checkpoint_metric": "loss"},
        "dataset": {"valid_subset": "valid"},
        "task": {"_name": "hubert_pretraining_vitals", "data": str(corpus), "labels": ["km"],
                 "label_rate": 50.0, "vitals": {"enabled": True, "k": 8}},
    })
    task = tasks.setup_task(root.task)
    assert task._vitals.enabled and task._vitals.jsonl_path == str(corpus / "ck" / "vitals.jsonl")
    assert task._vitals.probe.has_labels and len(task._vitals.probe) == 10
    # rebuilt from a checkpoint (e.g. by a fine-tuning recipe): no measurements, and stored
    # options are not checked
    with open_dict(root.task):
        root.task.vitals.option_of_a_later_version = 1
    again = tasks.setup_task(root.task, from_checkpoint=True)
    assert again._vitals is None
    assert isinstance(again, tasks.TASK_REGISTRY["hubert_pretraining"])


# ---------------------------------------------------------------------- sharded measurement
def _run_workers(corpus: Path, out: Path, world: int) -> list[dict]:
    init = out / f"pg_init_{world}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(corpus), str(out / f"w{world}"),
             str(r), str(world), str(init)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(world)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads((out / f"w{world}" / f"rank{r}.json").read_text()) for r in range(world)]


def test_two_process_gloo_shards_probe_and_matches_one_process(corpus: Path, tmp_path: Path) -> None:
    from dist_worker import measure_once

    single = measure_once(str(corpus), tmp_path / "w1")  # no process group: the reference
    r0, r1 = _run_workers(corpus, tmp_path, 2)
    # each rank fed only its shard, the shards are disjoint and cover the probe
    assert r0["ids"] and r1["ids"] and not set(r0["ids"]) & set(r1["ids"])
    assert sorted(r0["ids"] + r1["ids"]) == sorted(single["ids"])
    # only rank 0 writes the JSON-lines record
    assert r0["wrote_record"] and not r1["wrote_record"] and single["wrote_record"]
    lines = (tmp_path / "w2" / "vitals.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["update"] == 7
    keys = {metric_key(m, layer) for m in ALL_METRICS for layer in (0, 1, 2)}
    assert keys <= set(single["results"]) and TIME_KEY in single["results"]
    for key in keys:
        a, b, ref = r0["results"][key], r1["results"][key], single["results"][key]
        assert a == b, key  # every rank logs the same numbers
        assert math.isfinite(ref), key
        assert math.isclose(a, ref, rel_tol=1e-4, abs_tol=1e-6), (key, a, ref)
    # every label metric of the default set was measured (the opt-in ones are tested elsewhere)
    assert set(LABEL_METRICS) & set(ALL_METRICS) <= {k.split("/")[1] for k in keys}
    assert {"phone_purity", "cluster_purity", "pnmi", "cca_phone"} <= {k.split("/")[1] for k in keys}


# ---------------------------------------------------------------------- MR-HuBERT
def test_multires_hubert_measured_through_the_plugin_path(corpus: Path, tmp_path: Path) -> None:
    """fairseq-fixed has no multires_hubert, so the wrapper task is not registered here; the
    measurement path it would use (forward_fn + FairseqVitals + monitor) runs on s3prl's port
    of fairseq's MultiresHubertModel (same module tree), with labels at every layer's rate."""
    hubert_model = pytest.importorskip("s3prl.upstream.multires_hubert.hubert_model")
    from sslvitals.integrations.fairseq.runner import FairseqVitals

    torch.manual_seed(0)
    mcfg = hubert_model.MultiresHubertConfig(
        label_rate=50, label_rate_ratios=[1, 2], encoder_layers=2, encoder_embed_dim=64,
        encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
        final_dim=32, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    )
    model = hubert_model.MultiresHubertModel(
        mcfg, hubert_model.MultiresHubertPretrainingConfig(label_rate=50), [list(range(8))] * 2
    )
    cfg = VitalsConfig(enabled=True, k=8, reservoir_size=2000, silhouette_sample=0,
                       metrics="rankme,inertia,pnmi")
    vitals = FairseqVitals(cfg, data=str(corpus), save_dir=str(tmp_path))
    assert vitals.check_model(model) == list(range(7))  # 2 encoder + 2 middle + 2 decoder blocks
    results = vitals.on_begin_validation(model, step=1, epoch=1)
    for layer in range(7):
        for m in ("rankme", "inertia", "pnmi"):
            assert math.isfinite(results[metric_key(m, layer)]), (m, layer)
    # the 25 Hz middle layers see the same phones through label resampling: PNMI stays in (0, 1]
    assert 0 < results[metric_key("pnmi", 3)] <= 1
    vitals.finish_validation({"loss": 2.0})
    assert (tmp_path / "vitals.jsonl").is_file()


# ---------------------------------------------------------------------- schedule, logging, checks
def test_schedule_logging_and_best_metric_checks(corpus: Path, tmp_path: Path) -> None:
    from dist_worker import build_tiny_hubert
    from fairseq.logging import metrics

    from sslvitals.integrations.fairseq.runner import FairseqVitals

    model = build_tiny_hubert()
    cfg = VitalsConfig(enabled=True, metrics="rankme,stable_rank", layers="1,2",
                       every_n_validations=2, max_probe_seconds=5.0)
    vitals = FairseqVitals(cfg, data=str(corpus), save_dir=str(tmp_path))
    assert vitals.probe.total_seconds <= 5.0 and vitals.check_model(model) == [1, 2]
    done = []
    for step in (2, 4, 6):
        metrics.reset()
        res = vitals.on_begin_validation(model, step=step, epoch=1)
        with metrics.aggregate(new_root=True) as agg:  # what fairseq's validate() opens
            vitals.log_pending()
            vitals.log_pending()  # a second valid_step logs nothing more
            logged = agg.get_smoothed_values()
        vitals.finish_validation({"loss": float(step)})
        if res is None:
            assert not logged
            continue
        done.append(step)
        assert set(logged) == set(res) == {metric_key(m, layer) for m in ("rankme", "stable_rank")
                                            for layer in (1, 2)} | {TIME_KEY}
        for key, value in res.items():
            assert logged[key] == pytest.approx(value)
    assert done == [2, 6]  # every second validation, the first one included
    records = [json.loads(line) for line in (tmp_path / "vitals.jsonl").read_text().splitlines()]
    assert [(r["update"], r["loss"]) for r in records] == [(2, 2.0), (6, 6.0)]

    def build(best: str, **kw: object) -> FairseqVitals:
        return FairseqVitals(VitalsConfig(enabled=True, **kw), data=str(corpus),
                             save_dir=str(tmp_path), best_checkpoint_metric=best)

    with pytest.raises(SSLVitalsError, match="every_n_validations=1"):
        build("vitals/rankme/L2", every_n_validations=3)
    with pytest.raises(SSLVitalsError, match="keep_best_checkpoints=-1"):
        FairseqVitals(VitalsConfig(enabled=True), data=str(corpus), save_dir=str(tmp_path),
                      best_checkpoint_metric="vitals/rankme/L2", keep_best_checkpoints=3)
    with pytest.raises(SSLVitalsError, match="metric 'pnmi' is not measured"):
        build("vitals/pnmi/L2", metrics="label_free")
    with pytest.raises(SSLVitalsError, match="layer 1 is not measured"):
        build("vitals/rankme/L1", layers="0,2").check_model(model)
    unlabelled = tmp_path / "nolabels.tsv"
    unlabelled.write_text((corpus / "valid.tsv").read_text())
    with pytest.raises(SSLVitalsError, match="needs phone labels"):
        build("vitals/pnmi/L2", probe=str(unlabelled))
    build("loss")  # fairseq's own metrics are not ours to check


# ---------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_model_is_measured_like_its_float32_original(corpus: Path, tmp_path: Path,
                                                                   dtype: torch.dtype) -> None:
    """A model cast to reduced precision (fairseq's ``common.fp16``) is measured in its own
    dtype: the forward casts the probe to it, the metrics upcast the captured layers, and the
    numbers stay close to those of the same weights in float32.

    The post-LayerNorm layers of this model have one exactly-zero covariance direction. Rounding
    to bf16 lifts it to about 1e-5; judged by float32's threshold it entered alpha-ReQ's fit
    (+7-8 %, +11 % in fp16) and the numerical rank (64 instead of 63). The Gram accumulator
    now records the dtype it was fed and uses that precision's rounding level."""
    from dist_worker import build_tiny_hubert

    from sslvitals.integrations.fairseq.runner import FairseqVitals

    spectrum = ("rankme", "effective_rank", "rankme_t", "nesum", "stable_rank", "alpha_req")
    cfg = VitalsConfig(enabled=True, k=8, kmeans_iters=10, reservoir_size=4000, silhouette_sample=0,
                       batch_seconds=5.0, strict=True,
                       metrics=",".join(spectrum + ("numerical_rank", "inertia", "pnmi", "phone_purity")))
    results = {}
    for dt in (torch.float32, dtype):
        model = build_tiny_hubert().to(dt)
        vitals = FairseqVitals(cfg, data=str(corpus), save_dir=str(tmp_path / str(dt)))
        vitals.check_model(model)
        results[dt] = vitals.on_begin_validation(model, step=1, epoch=1)
        assert all(p.dtype == dt for p in model.parameters()), "measuring must not change the model's dtype"
    ref, low = results[torch.float32], results[dtype]
    keys = [k for k in ref if k != TIME_KEY]
    assert len(keys) == 10 * 3
    for key in keys:
        assert math.isfinite(low[key]), key
        metric = key.split("/")[1]
        if metric in spectrum:
            assert math.isclose(low[key], ref[key], rel_tol=0.01), (key, low[key], ref[key])
        elif metric == "numerical_rank":
            assert low[key] == ref[key] == 63.0, (key, low[key], ref[key])  # 64 dims, one removed by LayerNorm
        elif metric == "inertia":
            assert math.isclose(low[key], ref[key], rel_tol=0.05), (key, low[key], ref[key])
        else:  # label scores of a k-means on slightly different frames
            assert abs(low[key] - ref[key]) < 0.06, (key, low[key], ref[key])
