"""Config parsing, the key scheme and JSON-lines records."""
import json
import math

import pytest

from sslvitals import SSLVitalsError, metric_key, parse_key
from sslvitals.config import ALL_METRICS, LABEL_FREE_METRICS, VitalsConfig, parse_layers, parse_metrics
from sslvitals.records import append_record, make_record, read_records


def test_key_round_trip():
    for m in ALL_METRICS:
        for layer in (0, 3, 12):
            assert parse_key(metric_key(m, layer)) == (m, layer)
    assert parse_key("loss") is None
    assert parse_key("vitals/seconds") is None


def test_key_rejects_bad_metric_name():
    with pytest.raises(SSLVitalsError, match="lower-case"):
        metric_key("Bad Name", 1)


def test_parse_metrics_default_and_unknown():
    assert parse_metrics("default") == ALL_METRICS
    assert parse_metrics("label_free") == LABEL_FREE_METRICS
    assert parse_metrics("pnmi, rankme") == ("rankme", "pnmi")  # canonical order
    with pytest.raises(SSLVitalsError, match="unknown metric 'rankmee'.*valid metrics are"):
        parse_metrics("rankmee")


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers("0,-1", 12) == [0, 12]
    assert parse_layers("2,1,2", None) == [1, 2]
    with pytest.raises(SSLVitalsError, match="out of range.*0..4"):
        parse_layers("5", 4)
    with pytest.raises(SSLVitalsError, match="comma-separated integers"):
        parse_layers("first", 4)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(SSLVitalsError, match="unknown vitals option.*'kk'.*valid options are.*reservoir_size"):
        VitalsConfig.from_dict({"kk": 3})
    cfg = VitalsConfig.from_dict({"enabled": True, "k": 8, "reservoir_size": 100})
    assert cfg.enabled and cfg.k == 8


@pytest.mark.parametrize(
    "field,value,match",
    [("k", 1, "k must be"), ("reservoir_size", 10, "reservoir_size"), ("backend", "sklearn", "backend"),
     ("every_n_validations", 0, "every_n"), ("metrics", "nope", "unknown metric"), ("layers", "x", "layers")],
)
def test_config_validation_messages(field, value, match):
    with pytest.raises(SSLVitalsError, match=match):
        VitalsConfig.from_dict({field: value})


def test_records_round_trip(tmp_path):
    path = tmp_path / "run1" / "vitals.jsonl"
    rec = make_record(toolkit="fairseq", metrics={"vitals/rankme/L1": 3.5, "vitals/pnmi/L1": float("nan")},
                      update=10, seconds=1.5)
    append_record(path, rec)
    append_record(path, make_record(toolkit="fairseq", metrics={"vitals/rankme/L1": 4.0}, update=20))
    with open(path, "a") as fh:  # an interrupted write leaves a partial line
        fh.write('{"toolkit": "fair')
    recs = read_records(path)
    assert [r["update"] for r in recs] == [10, 20]
    assert recs[0]["run"] == "run1"
    assert math.isnan(recs[0]["metrics"]["vitals/pnmi/L1"])
    json.loads(path.read_text().splitlines()[0])  # valid JSON (NaN dialect)


def test_records_missing_file(tmp_path):
    with pytest.raises(SSLVitalsError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
