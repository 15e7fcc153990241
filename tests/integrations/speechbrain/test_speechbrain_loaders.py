"""``sslvitals score`` finds SpeechBrain checkpoints: ``CKPT+*`` folders, the ``save`` folder
and the output folder above it; run names and missing hyperparameters."""
from __future__ import annotations

from pathlib import Path

import pytest

from sslvitals.errors import SSLVitalsError
from sslvitals.offline.loaders import default_run_name, detect_kind, expand_checkpoints


def _run(root: Path, names=("CKPT+2026-01-01+10-00-00+00", "CKPT+2026-01-01+10-00-02+00")) -> Path:
    out = root / "bestrq_run"
    for name in names:
        (out / "save" / name).mkdir(parents=True)
        (out / "save" / name / "CKPT.yaml").write_text("end-of-epoch: true\n")
    (out / "hyperparams.yaml").write_text("seed: 1\n")
    (out / "save" / "not_a_ckpt").mkdir()
    return out


def test_detect_and_expand_speechbrain_folders(tmp_path):
    out = _run(tmp_path)
    ckpts = sorted((out / "save").glob("CKPT+*"))
    assert detect_kind(ckpts[0]).kind == "speechbrain"
    want = [str(p) for p in ckpts]
    for given in (out, out / "save", tmp_path):  # output folder, save folder, a folder of runs
        specs = expand_checkpoints([given])
        assert [s.path for s in specs] == want and {s.kind for s in specs} == {"speechbrain"}
        assert {default_run_name(s) for s in specs} == {"bestrq_run"}
    assert [s.path for s in expand_checkpoints([ckpts[1]])] == [str(ckpts[1])]
    with pytest.raises(SSLVitalsError, match="CKPT.yaml"):
        detect_kind(out / "save" / "not_a_ckpt")


def test_loader_needs_the_recipe_hyperparameters(tmp_path):
    pytest.importorskip("speechbrain")
    from sslvitals.offline.loaders import load_checkpoint

    out = _run(tmp_path)
    (out / "hyperparams.yaml").unlink()
    spec = expand_checkpoints([out])[0]
    with pytest.raises(SSLVitalsError, match="no hyperparams.yaml found"):
        load_checkpoint(spec, "cpu")
