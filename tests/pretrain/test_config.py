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
    flat = recipe_config("digits_ir_ring", ["w_out=0.3", "epochs=3", "dataset=digits", "mochi_hardest=7"])
    dotted = recipe_config("digits_ir_ring", ["sampler.w_out=0.3", "optim.epochs=3", "data.name=digits",
                                              "sampler.hardest=7"])
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
