"""memscore.settings: each setting is declared once (default, choices, bounds, help) and both the API and the
command read that declaration, so they cannot disagree."""
from __future__ import annotations

import dataclasses

import pytest

from memscore.cli import build_parser, main
from memscore.config import ScoreConfig
from memscore.errors import UsageError
from memscore.run import RunOptions
from memscore.settings import declared, option_name, settings_from_arguments
from memscore.train import TrainingRecipe


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_the_command_defaults_are_the_api_defaults():
    args = _parse("score", "data", "--victim", "recon:r", "--out", "s.zarr")
    assert settings_from_arguments(ScoreConfig, args) == ScoreConfig(victim="recon:r")
    assert settings_from_arguments(RunOptions, args) == RunOptions()
    assert ScoreConfig().precision == "auto"  # one default for the API and the command (README says why)
    args = _parse("train-victim", "data", "--out", "g.pth")
    assert settings_from_arguments(TrainingRecipe, args) == TrainingRecipe()
    args = _parse("shadows", "train", "data", "--population", "p.txt", "--k", "2", "--out", "sh")
    assert settings_from_arguments(TrainingRecipe, args) == TrainingRecipe()


def test_every_declared_setting_is_an_option_of_its_command():
    options = {action.dest: action.option_strings for action in _subparser("score")._actions}
    for cls in (ScoreConfig, RunOptions):
        for field, spec in declared(cls):
            assert options.get(field.name) == [option_name(field, spec)], field.name
    options = {action.dest for action in _subparser("train-victim")._actions}
    assert {field.name for field, _ in declared(TrainingRecipe)} <= options


def test_options_given_reach_the_settings_typed():
    args = _parse("score", "d", "--victim", "recon:r", "--out", "s", "--alpha", "0.5", "--fit-fraction", "0.6",
                  "--victim-opt", "ngf=64", "--victim-opt", "mode=eval", "--weights", "w.pth", "--batch-size", "8",
                  "--workers", "2")
    config = settings_from_arguments(ScoreConfig, args)
    assert config.alpha.kind == "fixed" and config.alpha.value == 0.5 and config.fit_fraction == 0.6
    assert config.victim_options == (("mode", "eval"), ("ngf", 64)) and config.backbone_weights == "w.pth"
    assert settings_from_arguments(RunOptions, args) == RunOptions(batch_size=8, workers=2)
    recipe = settings_from_arguments(TrainingRecipe, _parse("train-victim", "d", "--out", "g", "--no-jitter",
                                                            "--dropout", "--netG", "unet_64"))
    assert recipe == dataclasses.replace(TrainingRecipe(), use_jitter=False, use_dropout=True, netG="unet_64")


@pytest.mark.parametrize("option, value, api", [
    ("--fit-fraction", "1.5", {"fit_fraction": 1.5}),
    ("--augment", "0", {"augment": 0}),
    ("--ridge", "-1", {"ridge": -1.0}),
    ("--precision", "fp16", {"precision": "fp16"}),
    ("--alpha", "auto", {"alpha": "auto"}),
    ("--backbone", "resnet18", {"backbone": "resnet18"}),
])
def test_one_rule_refuses_a_value_in_the_api_and_on_the_command_line(option, value, api, tmp_path, capsys):
    with pytest.raises(UsageError):
        ScoreConfig(victim="recon:r", **api)
    with pytest.raises(SystemExit) as stopped:
        main(["score", str(tmp_path), "--victim", "recon:r", "--out", str(tmp_path / "s"), option, value])
    assert stopped.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_training_and_run_options_are_checked_by_their_declarations(capsys):
    with pytest.raises(UsageError, match="epochs must be a whole number >= 1"):
        TrainingRecipe(epochs=0)
    with pytest.raises(UsageError, match="netG must be one of"):
        TrainingRecipe(netG="unet_1024")
    with pytest.raises(UsageError, match="batch_size must be a whole number >= 1"):
        RunOptions(batch_size=0)
    with pytest.raises(SystemExit):
        _parse("shadows", "train", "d", "--population", "p", "--k", "3", "--out", "sh")
    assert "even number of shadows" in capsys.readouterr().err


def _subparser(name):
    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command")
    return commands.choices[name]
