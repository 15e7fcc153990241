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


def test_scatter_panel_texts_do_not_overlap(tmp_path, monkeypatch):
    """Long metric names, two-digit layers, four panels: at 3.3 in no title, axis label or
    tick label of one panel may run into another's, and rho stays in every title."""
    import sslvitals.offline.plot as plot_mod
    from sslvitals.offline.correlate import load_downstream

    rng = np.random.default_rng(0)
    steps = (100, 200, 300, 400, 500)
    rows = [{"run": "r", "checkpoint": f"ck_{s}.pt", "step": s, "layer": layer, "metric": metric,
             "value": float(rng.normal()) + 1e4 * (metric == "calinski_harabasz")}
            for s in steps for layer in (10, 11, 12, 13)
            for metric in ("simplified_silhouette", "calinski_harabasz")]
    pd.DataFrame({"checkpoint": [f"ck_{s}.pt" for s in steps], "task": "phone_accuracy",
                  "direction": "higher_is_better",
                  "score": [0.1, 0.2, 0.15, 0.3, 0.25]}).to_csv(tmp_path / "ds.csv", index=False)
    boxes = []
    real_save = plot_mod._save

    def save(fig, prefix, suffix):
        written = real_save(fig, prefix, suffix)  # draws the figure with its final layout
        renderer = fig.canvas.get_renderer()
        # each panel's drawn extent: axes, title, axis labels, the tick labels in view
        boxes.extend((ax.title.get_text(), ax.get_tightbbox(renderer))
                     for ax in fig.axes if ax.axison)
        return written

    monkeypatch.setattr(plot_mod, "_save", save)
    paths = plot_downstream_scatter(pd.DataFrame(rows), load_downstream(tmp_path / "ds.csv"),
                                    tmp_path / "fig", top=4)
    png = [p for p in paths if p.endswith(".png")][0]
    assert _png_width_in(png) == pytest.approx(COLUMN_WIDTH_IN, abs=0.35)
    assert len(boxes) == 4
    for title, _ in boxes:
        assert "$\\rho$ = " in title.split("\n")[1] and len(title.split("\n")[0]) <= 24
    for i, (_, mine) in enumerate(boxes):
        assert not any(mine.overlaps(theirs) for _, theirs in boxes[i + 1:])


def test_plot_cli_metrics_limit_the_scatter_panels(tmp_path, monkeypatch):
    import sslvitals.offline.plot as plot_mod
    from sslvitals.cli import main
    from sslvitals.offline.io import write_results

    write_results(_frame(), tmp_path / "s.csv")
    pd.DataFrame({"checkpoint": [f"ck_{s}.pt" for s in (100, 200, 300, 400)], "task": "asr_wer",
                  "score": [30.0, 20.0, 15.0, 12.0]}).to_csv(tmp_path / "ds.csv", index=False)
    seen = []
    real = plot_mod.plot_downstream_scatter

    def spy(results, *args, **kwargs):  # records what reaches the real function, then calls it
        seen.append(set(results["metric"]))
        return real(results, *args, **kwargs)

    monkeypatch.setattr(plot_mod, "plot_downstream_scatter", spy)
    assert main(["plot", str(tmp_path / "s.csv"), "--downstream", str(tmp_path / "ds.csv"),
                 "--kinds", "scatter", "--metrics", "pnmi", "--out", str(tmp_path / "f" / "v")]) == 0
    assert seen == [{"pnmi"}]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["v_scatter_asr_wer.pdf", "v_scatter_asr_wer.png"]
