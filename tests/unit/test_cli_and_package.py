"""Smoke tests over the whole package: every module imports, every subcommand has help, every
shipped config is valid."""

import importlib
import json
import pkgutil
from importlib import resources

import pytest
import visalign_pipelines

import visalign
from visalign import cli, recipes


def _modules(pkg):
    return [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")]


@pytest.mark.parametrize("module", _modules(visalign) + _modules(visalign_pipelines))
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "usage: visalign" in capsys.readouterr().out


def test_stage_flags_come_from_the_recipe_fields(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for f in recipes.TrainParams.__dataclass_fields__.values():
        assert f"--{f.name.replace('_', '-')}" in out
        assert f.metadata["help"].split()[0] in out


def test_bad_configuration_exits_2_naming_the_field(tmp_path, capsys):
    code = cli.main(["filter", "--prompts", str(tmp_path), "--responses", str(tmp_path), "--output", str(tmp_path),
                     "--set", "train.beta=-1"])
    assert code == 2 and "train.beta=-1" in capsys.readouterr().err


def test_every_shipped_deepspeed_config_is_valid():
    configs = sorted((resources.files("visalign") / "deepspeed").glob("**/*.json"))
    assert {c.stem for c in configs} == {"zero2", "zero3"}
    for c in configs:
        cfg = json.loads(c.read_text())
        assert cfg["zero_optimization"]["stage"] == int(c.stem[-1])
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the trainer's own settings
