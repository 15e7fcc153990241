"""Long-format IO (score CSV/JSON + training JSON-lines) and the markdown table."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sslvitals.errors import SSLVitalsError
from sslvitals.keys import metric_key
from sslvitals.offline.io import COLUMNS, load_results, write_results
from sslvitals.offline.table import format_table, select_steps


def _frame(run="r", ckpt="c.pt", step=10, values=None):
    values = values or {("rankme", 0): 3.0, ("rankme", 1): 4.5, ("pnmi", 0): 0.25}
    return pd.DataFrame([
        {"run": run, "checkpoint": ckpt, "step": step, "layer": ly, "metric": m, "value": v}
        for (m, ly), v in values.items()
    ])


def test_score_csv_json_and_jsonl_merge(tmp_path):
    from sslvitals.records import append_record, make_record

    write_results(_frame(), tmp_path / "a.csv")
    write_results(_frame(ckpt="d.pt", step=20), tmp_path / "b.json")
    jl = tmp_path / "vitals.jsonl"
    for upd, loss in ((5, 7.5), (15, 6.25)):
        append_record(jl, make_record(toolkit="fairseq", run="online", update=upd, loss=loss,
                                      metrics={metric_key("rankme", 2): upd * 1.5,
                                               metric_key("inertia", 2): float("nan"),
                                               "vitals/seconds": 1.0}))
    frame = load_results([tmp_path / "a.csv", tmp_path / "b.json", jl])
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(frame) == 3 + 3 + 4  # the run-level 'vitals/seconds' key is not a layer metric
    online = frame[frame["run"] == "online"]
    assert sorted(online["step"].tolist()) == [5, 5, 15, 15]
    rk = online[(online["metric"] == "rankme") & (online["step"] == 15)]
    assert rk["value"].item() == pytest.approx(22.5) and rk["layer"].item() == 2
    assert rk["loss"].item() == pytest.approx(6.25) and rk["toolkit"].item() == "fairseq"
    assert math.isnan(online[online["metric"] == "inertia"]["value"].iloc[0])
    assert frame[frame["checkpoint"] == "d.pt"]["step"].unique().tolist() == [20]
    # pandas reads the CSV directly, in the same long format
    raw = pd.read_csv(tmp_path / "a.csv")
    assert list(raw.columns) == list(COLUMNS) and len(raw) == 3


def test_duplicate_keys_are_rejected(tmp_path):
    write_results(_frame(), tmp_path / "a.csv")
    write_results(_frame(), tmp_path / "b.csv")
    with pytest.raises(SSLVitalsError, match="duplicated"):
        load_results([tmp_path / "a.csv", tmp_path / "b.csv"])


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(SSLVitalsError, match="does not exist"):
        load_results(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SSLVitalsError, match="unknown results file type"):
        load_results(tmp_path / "x.txt")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SSLVitalsError, match="lacks column"):
        load_results(tmp_path / "bad.csv")


def test_write_is_atomic_and_json_is_a_row_list(tmp_path):
    write_results(_frame(), tmp_path / "o.json")
    rows = json.loads((tmp_path / "o.json").read_text())
    assert isinstance(rows, list) and rows[0]["metric"] == "rankme"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_format_table_exact():
    text = format_table(_frame(), digits=3)
    assert text == (
        "### r - step 10 (c.pt)\n\n"
        "| metric | L0 | L1 |\n|---|---|---|\n"
        "| rankme | 3 | 4.5 |\n"
        "| pnmi | 0.25 | nan |\n"
    )


def test_select_steps():
    f = pd.concat([_frame(step=10), _frame(ckpt="d.pt", step=20)])
    from sslvitals.offline.io import normalise

    f = normalise(f)
    assert select_steps(f, "last")["step"].unique().tolist() == [20]
    assert select_steps(f, "first")["step"].unique().tolist() == [10]
    assert len(select_steps(f, "10,20")) == len(f)
    with pytest.raises(SSLVitalsError, match="steps present"):
        select_steps(f, "30")


def test_table_cli(tmp_path, capsys):
    from sslvitals.cli import main

    write_results(_frame(), tmp_path / "a.csv")
    assert main(["table", str(tmp_path / "a.csv"), "--metrics", "pnmi"]) == 0
    out = capsys.readouterr().out
    assert "| pnmi | 0.25 |" in out and "rankme" not in out
