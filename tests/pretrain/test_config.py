"""The nested training config: dotted overrides, flat aliases, typed parsing, YAML, stored configs."""

import dataclasses

import pytest
import yaml

from pretrain import config as config_module
from pretrain.config import ALIASES, ConfigError, TrainConfig, apply_overrides
from pretrain.recipes import recipe_config
from pretrain.samplers import SAMPLER_CLASSES
from pretrain.train import main


def test_dotted_overrides_reach_their_section_typed():
    config = recipe_config("digits_moco_ring", ["sampler.w_out=0.2", "optim.lr_milestones=0.5, 0.7",
                                                "data.hflip=on", "method.num_negatives=32"])
    assert config.sampler.w_out == 0.2 and config.optim.lr_milestones == (0.5, 0.7)
    assert config.data.hflip is True and config.method.num_negatives == 32
    sampler = config.build_sampler()
    assert sampler.params.w_out == 0.2 and sampler.epochs == config.optim.epochs


def test_flat_keys_are_aliases_with_a_one_line_notice(capsys):
    config_module._noticed.clear()
    flat = recipe_config("digits_ir_ring", ["w_out=0.3", "epochs=3", "dataset=digits", "anneal=constant"])
    dotted = recipe_config("digits_ir_ring", ["sampler.w_out=0.3", "optim.epochs=3", "data.name=digits",
                                              "sampler.anneal=constant"])
    assert flat == dotted
    notices = capsys.readouterr().err.splitlines()
    assert "notice: config key 'w_out' is now 'sampler.w_out'" in notices and len(notices) == 4
    recipe_config("digits_ir_ring", ["w_out=0.3"])
    assert capsys.readouterr().err == ""  # once per key


def test_every_sampler_parameter_has_a_config_key():
    sampler_keys = {f.name for f in dataclasses.fields(TrainConfig().sampler)}
    for cls in SAMPLER_CLASSES.values():
        assert {f.name for f in dataclasses.fields(cls.Params)} <= sampler_keys
    assert ALIASES["anneal"] == "sampler.anneal" and ALIASES["sampler"] == "sampler.name"


@pytest.mark.parametrize("override,match", [
    ("sampler.w_ot=0.2", r"unknown config key 'sampler.w_ot' \(did you mean sampler.w_out"),
    ("w_ot=0.2", r"did you mean w_out"),
    ("optim.epochs=ten", "override optim.epochs='ten': expected an integer"),
    ("data.hflip=maybe", "expected a boolean"),
    ("optim.lr_milestones=0.5,x", "expected a comma list of floats"),
    ("sampler.w_out", "is not key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        recipe_config("digits_ir_ring", [override])


def test_values_from_code_are_type_checked():
    with pytest.raises(ConfigError, match="Integer"):
        apply_overrides(TrainConfig(), {"optim.epochs": [1]})


def test_stored_configs_round_trip_including_flat_ones_of_earlier_versions():
    config = recipe_config("digits_ir_ring", ["optim.epochs=3"])
    assert TrainConfig.from_dict(config.to_dict()) == config
    flat = {"method": "ir", "sampler": "ring", "w_out": 0.5, "epochs": 3, "dataset": "digits", "recipe": "x",
            "lr_milestones": [0.68, 0.83], "ring_threshold_sample": 0}
    old = TrainConfig.from_dict(flat)
    assert (old.method.name, old.sampler.name, old.sampler.w_out, old.optim.epochs, old.recipe) == ("ir", "ring", 0.5, 3, "x")


def test_show_config_prints_yaml(capsys):
    assert main(["--recipe", "digits_ir_ring", "sampler.w_in=0.2", "--show-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["sampler"]["w_in"] == 0.2 and shown["method"]["name"] == "ir" and shown["optim"]["epochs"] == 8


@pytest.mark.parametrize(("overrides", "message"), [
    (["sampler.name=nce", "sampler.w_out=0.2"], "sampler 'nce' has no parameter w_out; its parameters: none"),
    (["sampler.name=ring", "sampler.hardest=512"],
     "sampler 'ring' has no parameter hardest; its parameters: w_out, w_in, anneal, anneal_epochs, anneal_steps"),
    (["method.name=moco", "sampler.name=nce", "sampler.tau_plus=0.2"], "sampler 'nce' has no parameter tau_plus"),
    (["sampler.name=ball", "w_in=0.2"], "sampler 'ball' has no parameter w_in; its parameters: w_out, anneal"),
    (["sampler.name=dcl", "sampler.beta=2"], "sampler 'dcl' has no parameter beta; its parameters: tau_plus"),
])
def test_a_parameter_the_chosen_sampler_lacks_is_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        recipe_config("digits_default_nce", overrides)
    assert str(error.value).startswith(message)


def test_the_chosen_samplers_own_parameters_are_accepted_and_stored_configs_read_back():
    assert recipe_config("digits_default_nce", ["sampler.name=hcl", "sampler.beta=2", "sampler.tau_plus=0.05"]).sampler.beta == 2.0
    assert recipe_config("digits_default_nce", ["method.name=moco", "sampler.name=mochi", "mochi_hardest=64"]).sampler.hardest == 64
    stored = recipe_config("digits_default_ring").to_dict()  # holds every sampler's parameters
    assert TrainConfig.from_dict(stored | {"sampler": stored["sampler"] | {"name": "nce"}}).sampler.name == "nce"
