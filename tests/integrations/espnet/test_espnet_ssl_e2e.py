"""End-to-end: ESPnet's real SSL task (``espnet2.bin.ssl_train``) through the sslvitals entry
point ``python -m sslvitals.integrations.espnet.ssl_train``.

The tiny SSL-task model of :data:`espnet_tinydata.SSL_CONFIG` (wav2vec CNN front-end, 2-block
transformer, HuBERT loss with masking) trains for two epochs on the seeded corpus, with a
``vitals:`` block in ``--config``; the metrics must appear with finite values in the
``[valid]`` results of the training log and in ``vitals.jsonl`` (one record per epoch).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

pytest.importorskip("espnet2")

import espnet_tinydata as tinydata  # noqa: E402  (on sys.path via conftest)
from test_espnet_e2e import VITALS, _records, _run, _valid_parts  # noqa: E402

from sslvitals.config import ALL_METRICS  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402

pytestmark = pytest.mark.e2e

ENTRY = ["-m", "sslvitals.integrations.espnet.ssl_train"]


def _ssl_args(root: Path, output_dir: Path, config: Path, *, epochs: int = 2) -> list[str]:
    """Arguments of ``ssl_train`` for the tiny corpus; the model lives in ``config``."""
    return ["--config", str(config), *tinydata.data_args(root, output_dir, epochs=epochs),
            "--num_att_plot", "0"]


@pytest.mark.timeout(600)
def test_ssl_train_two_epochs(tiny_root, tmp_path):
    out = tmp_path / "exp"
    config = tmp_path / "train_ssl.yaml"
    config.write_text(yaml.safe_dump(dict(tinydata.SSL_CONFIG, vitals=VITALS)))
    code, log = _run(ENTRY + _ssl_args(tiny_root, out, config), out)
    assert code == 0, log[-3000:]
    assert "The training was finished at 2 epochs" in log
    # layer 0 is the encoder's input, layers 1..2 the transformer blocks
    keys = {metric_key(m, layer) for m in ALL_METRICS for layer in (0, 1, 2)}
    valid = _valid_parts(log)
    assert len(valid) == 2
    for part in valid:
        assert "loss" in part and keys <= set(part) and TIME_KEY in part
        assert all(math.isfinite(part[k]) for k in keys), part
    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for rec, part in zip(records, valid):
        assert rec["toolkit"] == "espnet" and set(rec["metrics"]) == keys
        assert rec["probe"]["utterances"] == 6 and rec["probe"]["labels"] is True
        for key in keys:
            value = rec["metrics"][key]
            assert math.isfinite(value), key
            assert value == pytest.approx(part[key], rel=2e-3, abs=2e-3), key
    assert records[0]["metrics"] != records[1]["metrics"]  # the model changed in between
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["vitals"]["enabled"] is True and saved["encoder"] == "transformer"
