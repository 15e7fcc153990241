"""Figures: files written in both formats at paper column width."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sslvitals.errors import SSLVitalsError
from sslvitals.offline.plot import (
    COLUMN_WIDTH_IN,
    plot_downstream_scatter,
    plot_heatmaps,
    plot_metric_vs_update,
)


def _frame():
    rows = []
    for step in (100, 200, 300, 400):
        for layer in range(4):
            for metric in ("rankme", "pnmi", "inertia"):
                rows.append({"run": "r", "checkpoint": f"ck_{step}.pt", "step": step, "layer": layer,
                             "metric": metric, "value": np.log(step) * (layer + 1) + (metric == "pnmi")})
    return pd.DataFrame(rows)


def _png_width_in(path) -> float:
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi", (200, 200))[0]
        return im.size[0] / dpi


def test_metric_vs_update_and_heatmaps(tmp_path):
    paths = plot_metric_vs_update(_frame(), tmp_path / "fig", metrics=["rankme", "pnmi"])
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["pdf", "png"]
    for p in paths:
        assert (tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 1000
    png = [p for p in paths if p.endswith(".png")][0]
    assert _png_width_in(png) == pytest.approx(COLUMN_WIDTH_IN, abs=0.35)
    heat = plot_heatmaps(_frame(), tmp_path / "fig", metrics=["inertia"])
    assert [p.rsplit("/", 1)[1] for p in heat] == ["fig_heatmap_inertia.png", "fig_heatmap_inertia.pdf"]
    with pytest.raises(SSLVitalsError, match="not in the results"):
        plot_metric_vs_update(_frame(), tmp_path / "fig", metrics=["nope"])


def test_scatter_with_rho_in_title(tmp_path):
    from sslvitals.offline.correlate import load_downstream

    frame = _frame()
    pd.DataFrame({"checkpoint": [f"ck_{s}.pt" for s in (100, 200, 300, 400)], "task": "asr_wer",
                  "score": [30.0, 20.0, 15.0, 12.0]}).to_csv(tmp_path / "ds.csv", index=False)
    paths = plot_downstream_scatter(frame, load_downstream(tmp_path / "ds.csv"), tmp_path / "fig", top=2)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["fig_scatter_asr_wer.png", "fig_scatter_asr_wer.pdf"]


def test_plot_cli(tmp_path):
    from sslvitals.cli import main
    from sslvitals.offline.io import write_results

    write_results(_frame(), tmp_path / "s.csv")
    assert main(["plot", str(tmp_path / "s.csv"), "--out", str(tmp_path / "f" / "v"), "--metrics", "pnmi"]) == 0
    names = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert names == ["v_heatmap_pnmi.pdf", "v_heatmap_pnmi.png", "v_updates.pdf", "v_updates.png"]
