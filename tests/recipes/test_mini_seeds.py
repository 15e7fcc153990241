"""The miniature's seed-noise report (recipes/paper/mini/seeds.py) on synthetic runs.

The statistics are checked against independent references: scipy's Benjamini-Hochberg and
Spearman functions, and a construction whose within- and between-configuration correlations
have opposite, known signs.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


seeds_mod = _load("paper_mini_seeds", ROOT / "recipes" / "paper" / "mini" / "seeds.py")


def _values(records: list[dict]) -> pd.DataFrame:
    from sslvitals.offline.io import records_to_frame

    return records_to_frame(records)


def _synthetic(n_configs: int = 4, n_seeds: int = 5, step: int = 10, seed: int = 0):
    """Configs whose mean score rises with c; within a config, metric 'good' follows the score
    (same order) while its config offset runs the other way; 'noise' is unrelated."""
    rng = np.random.default_rng(seed)
    recs, down = [], []
    for c in range(n_configs):
        for s in range(n_seeds):
            within = float(rng.normal())
            score = 0.5 * c + 0.05 * within
            good = -10.0 * c + within
            recs.append({"toolkit": "fairseq", "run": f"cfg{c}@s{s}", "update": step, "loss": float(rng.normal()),
                         "metrics": {"vitals/good/L1": good, "vitals/noise/L1": float(rng.normal()),
                                     "vitals/const/L1": float(c)}})
            recs.append({"toolkit": "fairseq", "run": f"cfg{c}@s{s}", "update": 2 * step, "loss": 0.0,
                         "metrics": {"vitals/good/L1": float(rng.normal()), "vitals/noise/L1": 0.0,
                                     "vitals/const/L1": float(c)}})
            down.append({"run": f"cfg{c}", "task": "acc", "score": score, "direction": "higher", "seed": s})
    return _values(recs), pd.DataFrame(down)


def test_bh_qvalues_match_scipy_and_keep_nan():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, size=30)
    p[[3, 7]] = np.nan
    q = seeds_mod.bh_qvalues(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(q[ok], stats.false_discovery_control(p[ok], method="bh"), rtol=1e-12)
    assert np.isnan(q[[3, 7]]).all()
    assert np.isnan(seeds_mod.bh_qvalues(np.array([np.nan]))).all()


def test_within_config_removes_between_config_differences():
    values, down = _synthetic()
    within = seeds_mod.within_config(values, down, 10, n_perm=500)
    good = within[within["metric"] == "good"].iloc[0]
    # within every configuration the metric orders the seeds exactly like the score
    assert good["rho_within"] == pytest.approx(1.0)
    assert good["configs_same_sign"] == 4 and good["n"] == 20
    assert good["p"] == pytest.approx(1 / 501)  # no permutation reaches it: (0 + 1) / (n_perm + 1)
    # ... while over all runs it is strongly negative (the configurations' offsets dominate)
    pooled, _ = seeds_mod.pooled_and_means(values, down, 10, n_boot=0)
    assert float(pooled[pooled["metric"] == "good"]["spearman"].iloc[0]) < -0.8
    # constant within every configuration: no within-configuration ranking, NaN
    const = within[within["metric"] == "const"].iloc[0]
    assert np.isnan(const["rho_within"])
    noise = within[within["metric"] == "noise"].iloc[0]
    assert abs(noise["rho_within"]) < 0.6 and noise["p"] > 0.01
    assert "loss" in set(within["metric"]) and np.isnan(within[within["metric"] == "loss"]["q"]).all()


def test_per_seed_correlations_match_scipy_at_each_step():
    values, down = _synthetic()
    corr = seeds_mod.per_seed_correlations(values, down, 10)
    assert set(corr["at"]) == {"early", "final"} and set(corr["seed"]) == set(range(5))
    for seed in (0, 3):
        d = down[down["seed"] == seed].sort_values("run")
        for at, step in (("early", 10), ("final", 20)):
            v = values[(values["step"] == step) & (values["metric"] == "good")
                       & values["run"].str.endswith(f"@s{seed}")].sort_values("run")
            want = stats.spearmanr(v["value"].to_numpy(), d["score"].to_numpy()).statistic
            got = corr[(corr["seed"] == seed) & (corr["at"] == at) & (corr["metric"] == "good")]["spearman"]
            assert float(got.iloc[0]) == pytest.approx(want)
    rho = seeds_mod.rho_by_seed(corr)
    assert [c for c in rho.columns if c.startswith("rho_seed")] == [f"rho_seed{s}" for s in range(5)]
    row = rho[(rho["at"] == "early") & (rho["metric"] == "good")].iloc[0]
    vals = np.array([row[f"rho_seed{s}"] for s in range(5)])
    assert row["mean"] == pytest.approx(vals.mean()) and row["sd"] == pytest.approx(vals.std(ddof=1))
    assert row["same_sign"] == bool((np.sign(vals) == np.sign(vals[0])).all())


def test_means_average_metric_and_score_over_seeds():
    values, down = _synthetic()
    _, means = seeds_mod.pooled_and_means(values, down, 10, n_boot=0)
    good = means[means["metric"] == "good"].iloc[0]
    assert good["n"] == 4
    # config means of 'good' fall with c (offset -10 c) while mean scores rise: rho = -1
    assert float(good["spearman"]) == pytest.approx(-1.0)


def test_cli_rejects_one_seed_and_unknown_drop(tmp_path):
    with pytest.raises(SystemExit):
        seeds_mod.parse_args(["--workdir", "w", "--results", "r0", "--out", str(tmp_path)])
    res = tmp_path / "r0"
    res.mkdir()
    (res / "run_info.json").write_text('{"seed": 0, "early_step": 10}')
    pd.DataFrame([{"run": "a", "task": "t", "score": 1.0, "direction": "higher"}]).to_csv(res / "downstream.csv", index=False)
    res1 = tmp_path / "r1"
    res1.mkdir()
    (res1 / "run_info.json").write_text('{"seed": 0, "early_step": 10}')
    (res1 / "downstream.csv").write_text((res / "downstream.csv").read_text())
    with pytest.raises(SystemExit, match="same seed"):
        seeds_mod.main(["--workdir", str(tmp_path), "--results", str(res), str(res1), "--out", str(tmp_path / "o")])
    (res1 / "run_info.json").write_text('{"seed": 1, "early_step": 10}')
    with pytest.raises(SystemExit, match="unknown run"):
        seeds_mod.main(["--workdir", str(tmp_path), "--results", str(res), str(res1), "--out", str(tmp_path / "o"),
                        "--drop-runs", "zzz"])


def _between(n_configs: int = 12, n_seeds: int = 3, seed: int = 0):
    """Scores rise with the configuration; 'good' tracks each configuration's mean score with
    a little noise, 'noise' is unrelated, and the loss is unrelated too."""
    rng = np.random.default_rng(seed)
    recs, down = [], []
    for c in range(n_configs):
        for s in range(n_seeds):
            score = float(c) + 0.1 * float(rng.normal())
            recs.append({"toolkit": "fairseq", "run": f"cfg{c}@s{s}", "update": 10, "loss": float(rng.normal()),
                         "metrics": {"vitals/good/L1": float(c) + 0.1 * float(rng.normal()),
                                     "vitals/noise/L1": float(rng.normal())}})
            recs.append({"toolkit": "fairseq", "run": f"cfg{c}@s{s}", "update": 20, "loss": 0.0,
                         "metrics": {"vitals/good/L1": 0.0, "vitals/noise/L1": float(rng.normal())}})
            down.append({"run": f"cfg{c}", "task": "acc", "score": score, "direction": "higher", "seed": s})
    return _values(recs), pd.DataFrame(down)


def test_beats_loss_separates_a_predictive_metric_from_noise():
    values, down = _between()
    rho = seeds_mod.rho_by_seed(seeds_mod.per_seed_correlations(values, down, 10))
    out = seeds_mod.beats_loss(values, down, 10, rho, n_boot=500)
    good = out[out["metric"] == "good"].iloc[0]
    noise = out[out["metric"] == "noise"].iloc[0]
    # independent reference: the seed-averaged Spearman rho from scipy
    means = values[values["step"] == 10].assign(cfg=lambda f: f["run"].str.rsplit("@s", n=1).str[0])
    m = means[means["metric"] == "good"].groupby("cfg")["value"].mean().sort_index()
    sc = down.groupby("run")["score"].mean().sort_index()
    assert good["rho"] == pytest.approx(stats.spearmanr(m.to_numpy(), sc.to_numpy()).statistic)
    loss = means.drop_duplicates("run").groupby("cfg")["loss"].mean().sort_index()
    assert good["loss_rho"] == pytest.approx(stats.spearmanr(loss.to_numpy(), sc.to_numpy()).statistic)
    assert good["diff"] == pytest.approx(abs(good["rho"]) - abs(good["loss_rho"]))
    assert good["verdict"] == "beats the loss" and good["every_seed"]
    assert good["diff_lo"] > 0 and good["q_better"] < 0.05
    assert noise["verdict"] != "beats the loss" and noise["q_better"] > 0.05


def test_spread_vs_noise_and_mfcc_reference():
    down = pd.DataFrame([{"run": r, "task": "acc", "score": v, "seed": s}
                         for r, base in (("a", 0.2), ("b", 0.5), ("c", 0.8)) for s, v in
                         enumerate((base - 0.01, base, base + 0.01))])
    wide, _ = seeds_mod.downstream_agreement(down)
    sp = seeds_mod.spread_vs_noise(wide, {"acc": 0.5}).iloc[0]
    assert sp["spread"] == pytest.approx(0.6) and sp["median_seed_sd"] == pytest.approx(0.01)
    assert sp["ratio"] == pytest.approx(60.0)
    # b straddles the reference (one seed below, one equal, one above): neither above nor below
    assert sp["above_mfcc"] == "c" and sp["below_mfcc"] == "a"
