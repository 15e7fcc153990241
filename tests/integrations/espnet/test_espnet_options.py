"""The ESPnet vitals options: YAML, precedence, validation, probe resolution, CLI, shim.

No ESPnet import is needed for any of these.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from sslvitals.cli import main as sslvitals_main
from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.espnet import ENTRY_MODULES
from sslvitals.integrations.espnet.cli import example_yaml
from sslvitals.integrations.espnet.options import (
    add_vitals_arguments,
    load_probe,
    read_vitals_yaml,
    resolve_config,
    resolve_probe_path,
)
from sslvitals.integrations.espnet.python import target_of

RECIPE_CONF = Path(__file__).parents[3] / "recipes" / "espnet" / "conf" / "vitals.yaml"


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_shared_config_defaults():
    cfg = resolve_config(None, None)
    assert cfg == VitalsConfig()
    assert cfg.enabled is False


def test_file_then_block_precedence(tmp_path):
    f = _write(tmp_path / "v.yaml", {"vitals": {"enabled": True, "k": 64, "layers": "0,2"}})
    cfg = resolve_config(f, {"k": 32, "reservoir_size": 2048})
    assert (cfg.enabled, cfg.k, cfg.layers, cfg.reservoir_size) == (True, 32, "0,2", 2048)
    flat = _write(tmp_path / "flat.yaml", {"enabled": True, "every_n_validations": 3})
    assert read_vitals_yaml(flat) == {"enabled": True, "every_n_validations": 3}
    assert resolve_config(flat, {}).every_n_validations == 3


def test_unknown_key_lists_valid_options(tmp_path):
    f = _write(tmp_path / "v.yaml", {"enabled": True, "kmeans_k": 10})
    with pytest.raises(SSLVitalsError) as err:
        resolve_config(f, None)
    msg = str(err.value)
    assert "kmeans_k" in msg and "reservoir_size" in msg and "every_n_validations" in msg


@pytest.mark.parametrize("block, words", [
    ({"k": "100"}, ["vitals.k", "int"]),
    ({"strict": "yes"}, ["vitals.strict", "bool"]),
    ({"metrics": "rankme,purity"}, ["purity", "pnmi"]),
    ({"k": 1}, ["k must be >= 2"]),
    ({"layers": "0,x"}, ["layers"]),
    ({"every_n_validations": 0}, ["every_n_validations"]),
])
def test_bad_values_are_named(block, words):
    with pytest.raises(SSLVitalsError) as err:
        resolve_config(None, block)
    for w in words:
        assert w in str(err.value)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(SSLVitalsError, match="does not exist"):
        resolve_config(tmp_path / "nope.yaml", None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("vitals: [1, 2\n")
    with pytest.raises(SSLVitalsError, match="not valid YAML"):
        resolve_config(bad, None)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(SSLVitalsError, match="mapping"):
        resolve_config(lst, None)


def test_enabled_false_with_options_warns(caplog):
    with caplog.at_level("WARNING"):
        resolve_config(None, {"k": 16, "reservoir_size": 1024})
    assert "enabled" in caplog.text


def test_argparse_options_without_espnet(tmp_path):
    parser = argparse.ArgumentParser()
    add_vitals_arguments(parser)
    args = parser.parse_args(["--vitals_config", str(tmp_path / "x.yaml"), "--vitals",
                              "{enabled: true, k: 8}"])
    assert args.vitals == {"enabled": True, "k": 8}
    assert parser.parse_args([]).vitals_config is None


def test_probe_valid_is_the_validation_folder(tiny_root):
    valid = [(str(tiny_root / "data/valid/wav.scp"), "speech", "sound"),
             (str(tiny_root / "data/valid/text"), "text", "text")]
    cfg = VitalsConfig(enabled=True)
    assert resolve_probe_path(cfg, valid) == str(tiny_root / "data/valid")
    probe = load_probe(cfg, [",".join(v) for v in valid])  # raw strings work too
    assert len(probe) == 6 and probe.has_labels
    other = VitalsConfig(enabled=True, probe=str(tiny_root / "data/train"))
    assert resolve_probe_path(other, None) == str(tiny_root / "data/train")


@pytest.mark.parametrize("valid, match", [
    (None, "no '--valid_data_path_and_name_and_type"),
    ([("d/feats.scp", "speech", "kaldi_ark")], "raw audio"),
    ([("d/speech.list", "speech", "sound")], "not named wav.scp"),
])
def test_probe_valid_errors(valid, match):
    with pytest.raises(SSLVitalsError, match=match):
        resolve_probe_path(VitalsConfig(enabled=True), valid)


def test_probe_missing_folder_fails(tmp_path):
    with pytest.raises(SSLVitalsError, match="does not exist"):
        load_probe(VitalsConfig(enabled=True, probe=str(tmp_path / "nowhere")))


def test_example_and_recipe_yaml_are_valid():
    block = yaml.safe_load(example_yaml())["vitals"]
    cfg = resolve_config(None, block)
    assert cfg.enabled and set(block) == set(VitalsConfig().to_dict())
    recipe = resolve_config(RECIPE_CONF, None)
    assert recipe.enabled and recipe.probe == "valid"


def test_espnet_config_command(tmp_path, tiny_root, capsys):
    f = _write(tmp_path / "v.yaml", {"vitals": {"enabled": True, "k": 64}})
    train = _write(tmp_path / "train.yaml", {"max_epoch": 3, "vitals": {"k": 128}})
    rc = sslvitals_main(["espnet-config", "--vitals_config", str(f), "--config", str(train),
                         "--vitals", "reservoir_size=4096", "--valid_dir",
                         str(tiny_root / "data/valid")])
    out = capsys.readouterr().out
    assert rc == 0
    printed = yaml.safe_load(out)["vitals"]
    assert printed["k"] == 128 and printed["reservoir_size"] == 4096 and printed["enabled"]
    assert "6 utterances" in out and "frame labels: yes" in out
    assert sslvitals_main(["espnet-config", "--vitals", "kk=1"]) == 2


def test_python_shim_targets():
    assert target_of(["-m", "espnet2.bin.hubert_train", "--x"]) == ENTRY_MODULES[
        "espnet2.bin.hubert_train"]
    assert target_of(["-m", "espnet2.bin.ssl_train"]).endswith("espnet.ssl_train")
    assert target_of(["-m", "espnet2.bin.launch"]) is None
    assert target_of(["-c", "print(1)"]) is None


def test_python_shim_passes_other_commands_through(tmp_path):
    """Anything but the two training modules runs unchanged, arguments and status kept."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[3]))
    shim = [sys.executable, "-m", "sslvitals.integrations.espnet.python"]
    out = subprocess.run(shim + ["-c", "import sys; print(sys.argv[1:]); sys.exit(3)",
                                 "a b", "--c=d"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 3 and out.stdout.strip() == "['a b', '--c=d']"
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint('script', sys.argv[1])\n")
    out = subprocess.run(shim + [str(script), "x"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "script x"
