"""Correlation of metrics with downstream scores: known answers, references, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sslvitals.errors import SSLVitalsError
from sslvitals.offline.correlate import (
    bootstrap_ci,
    correlate,
    format_markdown,
    infer_direction,
    kendall_rows,
    load_downstream,
    spearman_rows,
)


def _results(units, metric_values: dict[tuple[str, int], np.ndarray], *, key="checkpoint", steps=None,
             loss=None):
    rows = []
    for i, u in enumerate(units):
        for (m, ly), vals in metric_values.items():
            rows.append({"run": u if key == "run" else "run0", "checkpoint": u if key == "checkpoint" else f"{u}.pt",
                         "step": (steps[i] if steps is not None else 100 * (i + 1)), "layer": ly,
                         "metric": m, "value": float(vals[i]),
                         "loss": float(loss[i]) if loss is not None else np.nan})
    return pd.DataFrame(rows)


def _downstream(tmp_path, units, task, scores, direction=None, key="checkpoint", name="ds.csv"):
    df = pd.DataFrame({key: units, "task": task, "score": scores})
    if direction is not None:
        df["direction"] = direction
    df.to_csv(tmp_path / name, index=False)
    return load_downstream(tmp_path / name)


def test_monotone_metric_gives_rho_one_with_sign_convention(tmp_path):
    rng = np.random.default_rng(0)
    units = [f"ckpt_{i}.pt" for i in range(12)]
    wer = rng.uniform(5, 40, size=12)
    res = _results(units, {
        ("pnmi", 3): np.exp(-wer / 10),          # higher pnmi <-> lower WER (better): rho = +1
        ("inertia", 3): np.log(wer),             # higher inertia <-> worse: rho = -1
        ("rankme", 3): rng.standard_normal(12),  # noise
    }, loss=wer ** 0.5)
    ds = _downstream(tmp_path, units, "asr_wer", wer, "lower_is_better")
    table = correlate(res, ds, n_boot=300, seed=1)
    row = table.set_index(["metric", "layer"])
    assert row.loc[("pnmi", 3), "spearman"] == pytest.approx(1.0)
    assert row.loc[("pnmi", 3), "kendall"] == pytest.approx(1.0)
    assert row.loc[("pnmi", 3), "spearman_lo"] == pytest.approx(1.0)
    assert row.loc[("inertia", 3), "spearman"] == pytest.approx(-1.0)
    # the loss is reported like a metric (layer NA): lower loss = better -> rho = -1
    loss_row = table[table["metric"] == "loss"]
    assert loss_row["spearman"].item() == pytest.approx(-1.0) and pd.isna(loss_row["layer"].item())
    # ranked by |rho|: the two perfect ones (and the loss) before the noise
    assert table["metric"].tolist()[-1] == "rankme"
    # higher-is-better task: same data, accuracy = -WER -> same signs
    ds2 = _downstream(tmp_path, units, "accuracy", -wer, name="ds2.csv")
    t2 = correlate(res, ds2, n_boot=0).set_index(["metric", "layer"])
    assert t2.loc[("pnmi", 3), "spearman"] == pytest.approx(1.0)


def test_noise_ci_contains_zero_and_is_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    ci = bootstrap_ci(x, y, n_boot=1000, seed=7)
    assert ci["spearman"][0] < 0 < ci["spearman"][1]
    assert ci["kendall"][0] < 0 < ci["kendall"][1]
    assert bootstrap_ci(x, y, n_boot=1000, seed=7) == ci
    assert bootstrap_ci(x, y, n_boot=1000, seed=8) != ci


def test_vectorised_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, size=(20, 15)).astype(float)  # many ties
    y = rng.integers(0, 4, size=(20, 15)).astype(float)
    sp, kt = spearman_rows(x, y), kendall_rows(x, y)
    for i in range(20):
        assert sp[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert kt[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)
    # exact permutation p-value for small n, against scipy's permutation test
    from sslvitals.offline.correlate import spearman_pvalue

    a, b = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0]), np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
    ref = stats.permutation_test((b,), lambda v: stats.spearmanr(a, v).statistic,
                                 permutation_type="pairings", n_resamples=np.inf).pvalue
    assert spearman_pvalue(a, b) == pytest.approx(ref)
    assert spearman_pvalue(np.arange(5.0), np.arange(5.0)) == pytest.approx(2 / 120)
    const = np.ones((1, 5))
    assert np.isnan(spearman_rows(const, np.arange(5.0)[None])[0])


def test_missing_checkpoint_is_listed_not_joined(tmp_path):
    units = ["a.pt", "b.pt", "c.pt", "d.pt"]
    res = _results(units[:3], {("pnmi", 1): np.arange(3.0)})
    ds = _downstream(tmp_path, units, "per", [4.0, 3.0, 2.0, 1.0])
    with pytest.raises(SSLVitalsError, match=r"d\.pt"):
        correlate(res, ds, n_boot=0)
    table = correlate(res, ds, n_boot=0, allow_missing=True)
    assert table["n"].max() == 3


def test_checkpoint_names_match_by_file_name_but_never_ambiguously(tmp_path):
    res = _results(["runs/x/checkpoint_1_10.pt", "runs/x/checkpoint_2_20.pt", "runs/x/checkpoint_3_30.pt"],
                   {("pnmi", 1): np.array([1.0, 2.0, 3.0])})
    ds = _downstream(tmp_path, ["checkpoint_1_10.pt", "checkpoint_2_20.pt", "checkpoint_3_30.pt"],
                     "eer", [3.0, 2.0, 1.0])
    assert correlate(res, ds, n_boot=0)["spearman"].iloc[0] == pytest.approx(1.0)
    res2 = pd.concat([res, _results(["runs/y/checkpoint_1_10.pt"], {("pnmi", 1): np.array([5.0])})])
    with pytest.raises(SSLVitalsError, match="matches several"):
        correlate(res2, ds, n_boot=0)


def test_run_level_join_uses_the_requested_step(tmp_path):
    runs = ["r1", "r2", "r3", "r4"]
    rows = []
    for i, r in enumerate(runs):
        for step, val in ((50, -i), (200, i)):  # early metric anti-correlated, final correlated
            rows.append({"run": r, "checkpoint": "", "step": step, "layer": 0, "metric": "rankme", "value": val})
    res = pd.DataFrame(rows)
    ds = _downstream(tmp_path, runs, "acc", [1.0, 2.0, 3.0, 4.0], key="run")
    assert correlate(res, ds, n_boot=0)["spearman"].item() == pytest.approx(1.0)
    assert correlate(res, ds, n_boot=0, step="50")["spearman"].item() == pytest.approx(-1.0)
    with pytest.raises(SSLVitalsError, match="no results at step 60"):
        correlate(res, ds, n_boot=0, step="60")
    # the same run measured online (checkpoint '') and offline at the same step: no silent pick
    dup = pd.concat([res, res.assign(checkpoint="r1_ck.pt")[res["run"] == "r1"]])
    with pytest.raises(SSLVitalsError, match="several values"):
        correlate(dup, ds, n_boot=0)


def test_downstream_table_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("checkpoint,task,score\na,wer,1\na,wer,2\n")
    with pytest.raises(SSLVitalsError, match="duplicated"):
        load_downstream(tmp_path / "dup.csv")
    (tmp_path / "nokey.csv").write_text("model,task,score\na,wer,1\n")
    with pytest.raises(SSLVitalsError, match="'checkpoint' or a 'run' column"):
        load_downstream(tmp_path / "nokey.csv")
    (tmp_path / "nodir.csv").write_text("checkpoint,task,score\na,slot_filling,1\n")
    with pytest.raises(SSLVitalsError, match="direction"):
        load_downstream(tmp_path / "nodir.csv")
    (tmp_path / "nan.csv").write_text("checkpoint,task,score\na,wer,abc\n")
    with pytest.raises(SSLVitalsError, match="non-numeric"):
        load_downstream(tmp_path / "nan.csv")
    assert infer_direction("asr_wer") == "lower" and infer_direction("sid_acc") == "higher"
    assert infer_direction("sv_eer") == "lower"


def test_yaml_downstream_and_cli(tmp_path, capsys):
    from sslvitals.cli import main
    from sslvitals.offline.io import write_results

    units = [f"c{i}.pt" for i in range(5)]
    vals = np.array([0.1, 0.4, 0.2, 0.5, 0.3])
    write_results(_results(units, {("pnmi", 2): vals}), tmp_path / "scores.csv")
    (tmp_path / "ds.yaml").write_text(
        "directions: {phone_er: lower}\nscores:\n"
        + "".join(f"  - {{checkpoint: {u}, task: phone_er, score: {10 - 10 * v}}}\n" for u, v in zip(units, vals))
    )
    rc = main(["correlate", str(tmp_path / "scores.csv"), str(tmp_path / "ds.yaml"),
               "--n-boot", "200", "--out", str(tmp_path / "corr")])
    assert rc == 0
    csv = pd.read_csv(tmp_path / "corr.csv")
    assert csv.loc[0, "spearman"] == pytest.approx(1.0) and csv.loc[0, "n"] == 5
    md = (tmp_path / "corr.md").read_text()
    assert "rho > 0" in md and "| 1 | pnmi | L2 | 5 |" in md
    assert "| 1 | pnmi | L2 | 5 |" in capsys.readouterr().out
    assert format_markdown(pd.DataFrame()) == "(no correlations)\n"
