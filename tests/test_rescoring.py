"""Tests for engine/rescoring.py: the registry is what the `memscore rescore` command offers (its --method choices,
its options, their help), each method's declared defaults are those of the engine function it runs, and the API
and the command write the same column and print the same lines."""
from __future__ import annotations

import inspect
import shutil

import numpy as np
import pytest

import memscore
from memscore.calibration import calibrate_per_image
from memscore.cli import build_parser, main
from memscore.likelihood_ratio import lira, rmia
from memscore.rescoring import DEFAULT_METHOD, METHODS, LiraOptions, PerImageOptions, RmiaOptions, command_options
from memscore.settings import declared
from memscore.store import ScoreStore
from stores_for_tests import synthetic_store

COMMAND_ONLY = {"command", "func", "store", "method", "strict"}
"""What `memscore rescore` parses besides the registry's options."""


def _names(options: type) -> set[str]:
    return {field.name for field, _ in declared(options)}


def test_the_command_offers_exactly_the_registrys_methods_and_options():
    parser = build_parser()
    parsed = vars(parser.parse_args(["rescore", "STORE"]))
    assert set(parsed) - COMMAND_ONLY == set().union(*(_names(method.options) for method in METHODS.values()))
    assert parsed["method"] == DEFAULT_METHOD == "alpha"
    assert all(value is None or value is False for name, value in parsed.items() if name not in COMMAND_ONLY)
    for name in METHODS:
        assert parser.parse_args(["rescore", "STORE", "--method", name]).method == name
    with pytest.raises(SystemExit):
        parser.parse_args(["rescore", "STORE", "--method", "loss"])
    for field, spec in declared(command_options()):  # the help names every method that takes the option
        takers = [name for name, method in METHODS.items() if field.name in _names(method.options)]
        assert takers and all(f"{name}" in spec.help for name in takers), field.name
    given = parser.parse_args(["rescore", "STORE", "--folds", "3", "--gamma", "1.5", "--offline", "--alpha", "fit"])
    assert (given.folds, given.gamma, given.offline, given.alpha.kind) == (3, 1.5, True, "fit")


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "auto"], "--alpha: alpha 'auto' chooses alpha with member labels"),
    (["--model", "forest"], "--model: invalid choice: 'forest'"),
    (["--folds", "five"], "--folds: expected a whole number, got 'five'"),
])
def test_option_values_are_checked_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["rescore", "STORE", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_options_shared_by_methods_are_declared_alike():
    for field, spec in declared(command_options()):
        alike = {(declaration.type, each.choices, each.parse) for method in METHODS.values()
                 for declaration, each in declared(method.options) if declaration.name == field.name}
        assert len(alike) == 1, field.name


def _defaults(function) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def test_each_methods_defaults_are_those_of_the_engine_function_it_runs():
    per_image, lira_options, rmia_options = PerImageOptions(), LiraOptions(), RmiaOptions()
    assert {name: getattr(per_image, name) for name in ("model", "folds", "seed", "level")} == \
        {name: _defaults(calibrate_per_image)[name] for name in ("model", "folds", "seed", "level")}
    assert {"online": not lira_options.offline, "fixed_variance": lira_options.fixed_variance,
            "transform": lira_options.transform, "prior_dof": lira_options.prior_dof} == _defaults(lira)
    assert {"online": not rmia_options.offline, "temperature": rmia_options.temperature,
            "offline_a": rmia_options.offline_a, "gamma": rmia_options.gamma,
            "reference": None} == _defaults(rmia)


def test_unknown_methods_and_options_are_refused_before_the_store_is_opened(tmp_path):
    with pytest.raises(ValueError, match="method must be one of alpha, per-image, lira, rmia, got 'loss'"):
        memscore.rescore(tmp_path / "none.zarr", "loss")
    with pytest.raises(ValueError, match="--method alpha takes no --fixed-variance; its options are --alpha, "
                                         "--reference"):
        memscore.rescore(tmp_path / "none.zarr", alpha="fit", fixed_variance=True)
    with pytest.raises(ValueError, match="--method alpha \\(the default\\) needs --alpha"):
        memscore.rescore(tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()


def test_the_api_and_the_command_write_the_same_lcal_and_say_the_same(tmp_path, capsys):
    api = synthetic_store(tmp_path / "api.zarr", n=200, shard_size=50, features=4, seed=3).path
    command = tmp_path / "command.zarr"
    shutil.copytree(api, command)
    store = ScoreStore.open(api)
    reference = tmp_path / "reference.txt"
    reference.write_text("".join(f"{i}\n" for i in store.column("id")[store.column("member") == 0]) + "stranger\n")
    rescored = memscore.rescore(api, "per-image", reference=reference)
    assert main(["rescore", str(command), "--method", "per-image", "--reference", str(reference)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        rescored.reference_ids["summary"], rescored.summary().replace(str(api), str(command))]
    assert "1 not in the store ('stranger')" in rescored.reference_ids["summary"]
    written = {path: ScoreStore.open(path) for path in (api, command)}
    np.testing.assert_array_equal(written[api].column("lcal"), written[command].column("lcal"))
    records = [{**written[path].column_attrs("lcal")["calibration"], "created": None} for path in (api, command)]
    assert records[0] == records[1] == {**rescored.record, "created": None}
    assert (rescored.method, rescored.column, rescored.record["folds"]) == ("per-image", "lcal", 5)
