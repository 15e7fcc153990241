"""Issue 16: the offline CLI never loses a user's file, fails before the work, and never shows
a traceback. Every case drives the real ``sslvitals`` CLI on real tiny checkpoints."""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import artifacts
from sslvitals.cli import main
from sslvitals.errors import SSLVitalsError
from sslvitals.offline.io import read_score_file, write_results
from sslvitals.offline.output import markdown_marker

#: Small, fast settings; later flags on a command line override these (argparse: last wins).
FAST = ["--metrics", "rankme,inertia", "--layers", "0,2", "--k", "4", "--reservoir-size", "300",
        "--silhouette-sample", "0", "--cca-frames", "2000", "--device", "cpu", "--no-progress"]


def _score(ckpt, probe, out, *extra: str) -> int:
    return main(["score", str(ckpt), "--probe", str(probe), "--out", str(out), *FAST, *extra])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, wav2vec2_ckpt, probe_varied) -> Path:
    """A real ``sslvitals score`` output (one checkpoint, rankme + inertia on layers 0 and 2)."""
    out = tmp_path_factory.mktemp("scored") / "scores.csv"
    assert _score(wav2vec2_ckpt, probe_varied, out) == 0
    return out


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _units_results(tmp_path: Path, values: dict[str, list[float]], units: int = 5) -> Path:
    """Results of ``units`` checkpoints (one value per metric each) and a downstream table."""
    rows = []
    for m, vals in values.items():
        for i in range(units):
            rows.append({"run": "r", "checkpoint": f"c{i}.pt", "step": 10 * (i + 1), "layer": 1,
                         "metric": m, "value": vals[i]})
    write_results(pd.DataFrame(rows), tmp_path / "res.csv")
    pd.DataFrame({"checkpoint": [f"c{i}.pt" for i in range(units)], "task": "asr_wer",
                  "score": [30.0 - 2 * i for i in range(units)]}).to_csv(tmp_path / "down.csv",
                                                                         index=False)
    return tmp_path / "res.csv"


# ------------------------------------------------------------------ files are never lost
def test_correlate_never_replaces_its_input(scored, tmp_path, caplog):
    scores = tmp_path / "scores.csv"
    shutil.copy(scored, scores)
    pd.DataFrame({"checkpoint": [str(read_score_file(scores)["checkpoint"].iloc[0])],
                  "task": ["asr_wer"], "score": [12.0]}).to_csv(tmp_path / "d.csv", index=False)
    before = scores.read_bytes()
    rc = main(["correlate", str(scores), str(tmp_path / "d.csv"), "--out", str(tmp_path / "scores")])
    assert rc == 2
    assert "is also an input of this command" in caplog.text and "--out" in caplog.text
    assert scores.read_bytes() == before
    assert not (tmp_path / "scores.md").exists()  # nothing at all was written


@pytest.mark.parametrize("case", ["own input", "unrelated csv", "unrelated md"])
def test_table_never_replaces_a_file_it_did_not_write(scored, tmp_path, caplog, case):
    keep = tmp_path / "keep.csv"
    shutil.copy(scored, keep)
    target = {"own input": keep, "unrelated csv": tmp_path / "mine.csv",
              "unrelated md": tmp_path / "notes.md"}[case]
    if case != "own input":
        target.write_text("my own notes\n")
    before = target.read_bytes()
    assert main(["table", str(keep), "--out", str(target)]) == 2
    assert target.read_bytes() == before
    assert "--out" in caplog.text and ("--force" in caplog.text or "input" in caplog.text)
    if case != "own input":
        assert main(["table", str(keep), "--out", str(target), "--force"]) == 0
        assert target.read_text().startswith(markdown_marker("table"))


def test_table_replaces_its_own_output(scored, tmp_path):
    out = tmp_path / "t.md"
    assert main(["table", str(scored), "--out", str(out)]) == 0
    first = out.read_text()
    assert main(["table", str(scored), "--out", str(out), "--digits", "2"]) == 0
    assert out.read_text() != first and out.read_text().startswith(markdown_marker("table"))


def test_score_json_never_replaces_an_unrelated_file(wav2vec2_ckpt, probe_varied, tmp_path, caplog):
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}\n')
    out = tmp_path / "s.csv"
    assert _score(wav2vec2_ckpt, probe_varied, out, "--json", str(notes)) == 2
    assert notes.read_text() == '{"my": "notes"}\n'
    assert "--json" in caplog.text and "--force" in caplog.text
    assert not out.exists()  # refused before any work
    assert _score(wav2vec2_ckpt, probe_varied, out, "--json", str(notes), "--force") == 0
    assert len(read_score_file(notes)) == len(read_score_file(out)) == 4


@pytest.mark.parametrize("content", ["a,b\n1,2\n", "just some text\n"])
def test_score_out_never_replaces_an_unrelated_file(wav2vec2_ckpt, probe_varied, tmp_path, caplog,
                                                    content):
    out = tmp_path / "other.csv"
    out.write_text(content)
    assert _score(wav2vec2_ckpt, probe_varied, out) == 2
    assert out.read_text() == content and "is not a results table" in caplog.text


def test_score_never_writes_over_a_checkpoint_or_the_probe(wav2vec2_ckpt, probe_varied, tmp_path):
    before = probe_varied.read_bytes()
    assert _score(wav2vec2_ckpt, probe_varied, tmp_path / "s.csv", "--json", str(probe_varied)) == 2
    assert probe_varied.read_bytes() == before


def test_plot_never_replaces_a_foreign_figure(scored, tmp_path, caplog):
    prefix = tmp_path / "fig" / "v"
    prefix.parent.mkdir()
    foreign = tmp_path / "fig" / "v_heatmap_rankme.png"
    foreign.write_bytes(b"\x89PNG a figure someone else made")
    assert main(["plot", str(scored), "--out", str(prefix), "--kinds", "heatmap"]) == 2
    assert foreign.read_bytes() == b"\x89PNG a figure someone else made"
    assert not (tmp_path / "fig" / "v_heatmap_inertia.png").exists()  # checked before drawing
    foreign.unlink()
    assert main(["plot", str(scored), "--out", str(prefix), "--kinds", "heatmap"]) == 0
    assert main(["plot", str(scored), "--out", str(prefix), "--kinds", "heatmap"]) == 0  # own files


@pytest.mark.parametrize("command", ["score", "correlate", "table", "plot"])
def test_outputs_get_the_umask_and_keep_their_mode(scored, wav2vec2_ckpt, probe_varied, tmp_path,
                                                   umask022, command):
    res = _units_results(tmp_path, {"rankme": [1.0, 2.0, 3.0, 4.0, 5.0]})

    def run(extra: tuple[str, ...] = ()) -> list[Path]:
        if command == "score":
            out = tmp_path / "s.csv"
            assert _score(wav2vec2_ckpt, probe_varied, out, *extra) == 0
            return [out]
        if command == "correlate":
            assert main(["correlate", str(res), str(tmp_path / "down.csv"), "--n-boot", "20",
                         "--out", str(tmp_path / "corr")]) == 0
            return [tmp_path / "corr.csv", tmp_path / "corr.md"]
        if command == "table":
            assert main(["table", str(scored), "--out", str(tmp_path / "t.md")]) == 0
            return [tmp_path / "t.md"]
        assert main(["plot", str(scored), "--out", str(tmp_path / "f"), "--kinds", "heatmap",
                     "--metrics", "rankme"]) == 0
        return [tmp_path / "f_heatmap_rankme.png", tmp_path / "f_heatmap_rankme.pdf"]

    for path in run():
        assert _mode(path) == 0o644, path  # the umask, not a private temporary file's 0600
        path.chmod(0o640)
    # a second run: score adds rows (another metric), the others rewrite their files
    for path in run(("--metrics", "rankme,inertia,stable_rank") if command == "score" else ()):
        assert _mode(path) == 0o640, path
    if command == "score":
        assert set(read_score_file(tmp_path / "s.csv")["metric"]) == {"rankme", "inertia", "stable_rank"}


# ------------------------------------------------------------------ failing before the work
def _probe_with(tmp_path: Path, lengths: list[int]) -> Path:
    (tmp_path / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [str(tmp_path.resolve())]
    for i, n in enumerate(lengths):
        sf.write(tmp_path / "wav" / f"u{i}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32),
                 16000)
        lines.append(f"wav/u{i}.wav\t{n}")
    (tmp_path / "p.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "p.tsv"


def test_utterance_shorter_than_the_receptive_field_is_rejected_up_front(wav2vec2_ckpt, tmp_path,
                                                                         caplog):
    probe = _probe_with(tmp_path, [16000, 300, 12000, 15000])
    out = tmp_path / "s.csv"
    assert _score(wav2vec2_ckpt, probe, out, "--metrics", "rankme,cca_mel") == 2
    assert "u1 (300 samples)" in caplog.text and "400" in caplog.text
    assert "scoring on" in caplog.text and "rows in" not in caplog.text and not out.exists()


@pytest.mark.parametrize("seconds,named", [("0", "--max-probe-seconds 0"),
                                           ("-5", "--max-probe-seconds -5"),
                                           ("0.01", "no utterance of probe")])
def test_max_probe_seconds_leaving_no_utterance_is_an_error(wav2vec2_ckpt, probe_varied, tmp_path,
                                                            caplog, seconds, named):
    out = tmp_path / "s.csv"
    assert _score(wav2vec2_ckpt, probe_varied, out, "--max-probe-seconds", seconds) == 2
    assert named in caplog.text and not out.exists()


def test_k_larger_than_the_probe_frames_fails_before_any_model_loads(wav2vec2_ckpt, probe_varied,
                                                                      tmp_path, caplog):
    out = tmp_path / "s.csv"
    assert _score(wav2vec2_ckpt, probe_varied, out, "--k", "500", "--reservoir-size", "40000") == 2
    assert "--k 500 (given)" in caplog.text and "Lower --k to at most" in caplog.text
    assert "rows in" not in caplog.text and not out.exists()
    # label-free rank metrics alone do not need k-means: the same --k is fine for them
    assert _score(wav2vec2_ckpt, probe_varied, out, "--k", "500", "--reservoir-size", "40000",
                  "--metrics", "rankme") == 0


def test_nan_rows_of_other_settings_are_measured_again(wav2vec2_ckpt, probe_varied, tmp_path,
                                                       caplog):
    out = tmp_path / "s.csv"
    assert _score(wav2vec2_ckpt, probe_varied, out) == 0
    first = read_score_file(out)
    # as if --k had been too large for a layer: its k-means rows came out NaN
    broken = first.copy()
    broken.loc[broken["metric"] == "inertia", "value"] = float("nan")
    write_results(broken, out)
    caplog.set_level(logging.INFO)
    assert _score(wav2vec2_ckpt, probe_varied, out, "--k", "5") == 0
    assert "NaN row(s)" in caplog.text and "measured again" in caplog.text
    now = read_score_file(out)
    inertia = now[now["metric"] == "inertia"]
    assert len(now) == 4 and inertia["value"].notna().all() and set(inertia["k"]) == {5}
    rankme = now[now["metric"] == "rankme"].sort_values("layer")
    assert rankme["value"].tolist() == first[first["metric"] == "rankme"].sort_values("layer")["value"].tolist()
    # ... because rankme does not depend on k: a fresh k=5 file gives exactly the same values
    fresh = tmp_path / "fresh.csv"
    assert _score(wav2vec2_ckpt, probe_varied, fresh, "--k", "5") == 0
    f = read_score_file(fresh)
    assert f[f["metric"] == "rankme"].sort_values("layer")["value"].tolist() == rankme["value"].tolist()
    # a finished (non-NaN) row of other settings still stops the run before any work
    caplog.clear()
    assert _score(wav2vec2_ckpt, probe_varied, out, "--k", "6") == 2
    assert "k: the file has 5, this run 6" in caplog.text and "Nothing was computed" in caplog.text


def test_read_only_out_fails_before_any_work(scored, wav2vec2_ckpt, probe_varied, tmp_path, caplog):
    out = tmp_path / "s.csv"
    shutil.copy(scored, out)
    out.chmod(0o444)
    before = out.read_bytes()
    assert _score(wav2vec2_ckpt, probe_varied, out, "--metrics", "rankme,stable_rank") == 2
    assert "read-only" in caplog.text and "chmod u+w" in caplog.text
    assert "rows in" not in caplog.text and out.read_bytes() == before
    # a folder where nothing can be created (here: a path through a regular file)
    caplog.clear()
    assert _score(wav2vec2_ckpt, probe_varied, tmp_path / "s.csv" / "sub" / "x.csv") == 2
    assert "choose a writable folder" in caplog.text and "rows in" not in caplog.text


@pytest.mark.parametrize("flags,named", [
    (["--device", "gpu"], "--device gpu is not a device"),
    (["--device", "cuda:x"], "--device cuda:x"),
    (["--layers", "0,x"], "--layers '0,x'"),
    (["--k", "1"], "--k 1:"),
    (["--kmeans-iters", "0"], "--kmeans-iters 0:"),
    (["--reservoir-size", "3"], "--reservoir-size 3 is below --k 4"),
    (["--silhouette-sample", "-1"], "--silhouette-sample -1"),
    (["--cca-frames", "1"], "--cca-frames 1"),
    (["--batch-seconds", "0"], "--batch-seconds 0"),
    (["--word-vocab-size", "1"], "--word-vocab-size 1"),
    (["--metrics", "rankme,bogus"], "unknown metric 'bogus'"),
])
def test_options_are_checked_at_start_up_and_named_as_typed(wav2vec2_ckpt, probe_varied, tmp_path,
                                                            caplog, flags, named):
    caplog.set_level(logging.INFO)
    assert _score(wav2vec2_ckpt, probe_varied, tmp_path / "s.csv", *flags) == 2
    assert named in caplog.text
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert not re.search(r"(?<!ssl)vitals\.\w", messages)  # the flag, not the config field
    assert "rows in" not in caplog.text and not (tmp_path / "s.csv").exists()


def test_reservoir_below_k_from_the_defaults_names_both_flags(wav2vec2_ckpt, probe_varied, tmp_path,
                                                              caplog):
    rc = main(["score", str(wav2vec2_ckpt), "--probe", str(probe_varied), "--out",
               str(tmp_path / "s.csv"), "--reservoir-size", "500", "--no-progress"])
    assert rc == 2
    assert "--reservoir-size 500 (given) is below --k 1024 (the default)" in caplog.text


# ------------------------------------------------------------------ correlate
def test_correlate_gives_no_p_value_for_an_undefined_correlation(tmp_path):
    inf = float("inf")
    res = _units_results(tmp_path, {"rankme": [inf] * 5, "pnmi": [0.1, inf, 0.3, 0.2, 0.5],
                                    "inertia": [3.0] * 5, "stable_rank": [1.0, 2.0, 4.0, 3.0, 5.0]})
    assert main(["correlate", str(res), str(tmp_path / "down.csv"), "--n-boot", "50",
                 "--out", str(tmp_path / "c")]) == 0
    table = pd.read_csv(tmp_path / "c.csv").set_index("metric")
    for m in ("rankme", "inertia"):  # all inf; constant
        assert np.isnan(table.loc[m, "spearman"]) and np.isnan(table.loc[m, "spearman_p"])
        assert np.isnan(table.loc[m, "kendall"]) and np.isnan(table.loc[m, "kendall_p"])
    assert table.loc["rankme", "n"] == 0 and table.loc["pnmi", "n"] == 4  # inf left out
    assert np.isfinite(table.loc["pnmi", "spearman_p"])
    assert np.isfinite(table.loc["stable_rank", "spearman"])


@pytest.mark.parametrize("units,values,reason", [
    (2, {"rankme": [1.0, 2.0]}, "fewer than 3 units"),
    (5, {"rankme": [2.0] * 5}, "the metric is constant"),
])
def test_correlate_says_why_a_table_is_empty(tmp_path, caplog, units, values, reason):
    res = _units_results(tmp_path, values, units=units)
    rc = main(["correlate", str(res), str(tmp_path / "down.csv"), "--out", str(tmp_path / "c")])
    assert rc == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(reason in r.getMessage() and "empty" in r.getMessage() for r in warnings)
    assert (tmp_path / "c.csv").exists()


# ------------------------------------------------------------------ identity and truncation
def test_same_checkpoint_by_two_paths_in_one_command_is_scored_once(wav2vec2_ckpt, probe_varied,
                                                                     tmp_path, monkeypatch, caplog):
    out = tmp_path / "s.csv"
    monkeypatch.chdir(wav2vec2_ckpt.parent)
    rc = main(["score", str(wav2vec2_ckpt), wav2vec2_ckpt.name, "--probe", str(probe_varied),
               "--out", str(out), *FAST])
    assert rc == 0 and "given twice" in caplog.text
    table = read_score_file(out)
    assert len(table) == 4 and table["checkpoint"].nunique() == 1
    assert main(["correlate", str(out), str(_downstream_for(table, tmp_path)), "--out",
                 str(tmp_path / "c")]) in (0, 1)  # accepted: no duplicated key


def _downstream_for(table: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "d.csv"
    pd.DataFrame({"checkpoint": table["checkpoint"].unique(), "task": "asr_wer",
                  "score": 10.0}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("cut", ["mid-value", "missing fields"])
def test_truncated_csv_is_reported_not_read(scored, wav2vec2_ckpt, probe_varied, tmp_path, caplog,
                                            cut):
    out = tmp_path / "s.csv"
    text = scored.read_text()
    if cut == "mid-value":  # a crash mid-write: the last row stops inside its value
        head, last = text.rstrip("\n").rsplit("\n", 1)
        fields = last.split(",")
        text = head + "\n" + ",".join(fields[:5]) + "," + fields[5][:2]
    else:  # a row with fields missing, newline present
        text = text + "r,c.pt,1,0,rankme,0.\n"
    out.write_text(text)
    with pytest.raises(SSLVitalsError, match="cut while being written"):
        read_score_file(out)
    for argv in (["table", str(out)],
                 ["score", str(wav2vec2_ckpt), "--probe", str(probe_varied), "--out", str(out), *FAST]):
        caplog.clear()
        assert main(argv) == 2
        assert "cut while being written" in caplog.text
    assert out.read_text() == text  # never "repaired" silently


# ------------------------------------------------------------------ clearer messages
def test_save_dir_with_only_last_and_best_scores_last(wav2vec2_ckpt, probe_varied, tmp_path, caplog):
    save = tmp_path / "run" / "checkpoints"
    save.mkdir(parents=True)
    shutil.copy(wav2vec2_ckpt, save / "checkpoint_last.pt")
    shutil.copy(wav2vec2_ckpt, save / "checkpoint_best.pt")
    out = tmp_path / "s.csv"
    assert main(["score", str(save), "--probe", str(probe_varied), "--out", str(out), *FAST]) == 0
    assert any(r.levelno == logging.WARNING and "scoring checkpoint_last.pt" in r.getMessage()
               for r in caplog.records)
    assert set(read_score_file(out)["checkpoint"].map(lambda c: Path(c).name)) == {"checkpoint_last.pt"}


def test_internal_error_is_one_line_unless_debug(monkeypatch, scored, caplog):
    import sslvitals.offline.table as table_module

    def broken(args):  # an internal bug: not a user error
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(table_module, "run", broken)
    monkeypatch.delenv("SSLVITALS_DEBUG", raising=False)
    assert main(["table", str(scored)]) == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "This is a bug" in errors[0].getMessage() and "--debug" in errors[0].getMessage()
    caplog.clear()
    assert main(["table", str(scored), "--debug"]) == 3
    assert any(r.exc_info is not None for r in caplog.records)  # the traceback, on request


@pytest.mark.parametrize("argv,named", [
    (["score", "{ckpt}", "--probe", "{probe}", "--out", "{tmp}/s.csv", "--device", "gpu"], "--device gpu"),
    (["table", "{tmp}/missing.csv"], "does not exist"),
])
def test_a_user_error_in_a_real_process_prints_one_message_and_no_traceback(
        wav2vec2_ckpt, probe_varied, tmp_path, argv, named):
    argv = [a.format(ckpt=wav2vec2_ckpt, probe=probe_varied, tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "sslvitals.cli", *argv], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if "| ERROR |" in ln]
    assert len(errors) == 1 and named in errors[0]


def test_correlate_replaces_its_own_report_of_an_earlier_version(tmp_path):
    res = _units_results(tmp_path, {"rankme": [1.0, 2.0, 3.0, 4.0, 5.0]})
    old_report = tmp_path / "c.md"  # written before reports carried the marker line
    old_report.write_text("Sign convention: rho > 0 means a higher metric value goes with a better "
                          "downstream result (scores of lower-is-better tasks are negated).\n")
    assert main(["correlate", str(res), str(tmp_path / "down.csv"), "--n-boot", "20",
                 "--out", str(tmp_path / "c")]) == 0
    assert old_report.read_text().startswith(markdown_marker("correlate"))
