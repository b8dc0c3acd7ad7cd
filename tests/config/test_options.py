"""One home per setting: options dataclasses own the settings, schemas are generated from them,
unknown keys are errors, and a method selects the sparsity group it needs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sparseforge.compose import register_all
from sparseforge.errors import ConfigError
from sparseforge.lightning.sparsity_callback import SparsityCallback, register_sparsity_schemas
from sparseforge.methods import DERPP, ER, METHODS
from sparseforge.options import build_options
from sparseforge.sparsity import Sparsifier, SparsityOptions
from sparseforge.sparsity.rules import RULES, DropAndGrow
from sparseforge.train import build
from tests.helpers.cl import QUIET
from tests.helpers.config import compose_config

NOWHERE = "/nonexistent/run"


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_an_unknown_method_key_names_the_closest_valid_one():
    with pytest.raises(
        ConfigError, match=r"method\.buffr_size: unknown key 'buffr_size' \(did you mean 'buffer_size'\?\)"
    ):
        ER(_model(), _sgd, buffr_size=10)


def test_a_bad_choice_names_the_allowed_values():
    with pytest.raises(
        ConfigError, match=r"method\.buffer_policy: unknown value 'fifo' \(allowed: reservoir, class_balanced\)"
    ):
        ER(_model(), _sgd, buffer_policy="fifo")


def test_options_reach_the_method_and_inherit_the_parents():
    method = DERPP(_model(), _sgd, alpha=0.7, buffer_size=11)
    assert (method.options.alpha, method.options.beta, method.options.buffer_size) == (0.7, 0.5, 11)
    assert method.buffer.capacity == 11


def test_the_generated_method_schema_holds_the_options_defaults_and_wiring():
    register_all()
    node = ConfigStore.instance().load("schema/method/derpp.yaml").node
    assert node._target_ == "sparseforge.methods.derpp.DERPP"
    assert (node.alpha, node.beta, node.buffer_size) == (0.2, 0.5, 500)
    assert OmegaConf.to_container(node)["seed"] == "${seed}"  # wiring: interpolations, not values
    assert OmegaConf.to_container(node)["minibatch_size"] == "${data.batch_size}"
    assert set(node.keys()) == {"_target_", *build_options(DERPP.Options, {}, "method").__dataclass_fields__}


def test_a_misspelled_config_key_is_refused_while_composing():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method=derpp", "method.bta=0.1"], output_dir=NOWHERE)
    assert "bta" in str(err.value)


def test_a_rule_setting_reaches_the_rule_through_the_config(tmp_path):
    cfg = compose_config([*QUIET, "sparsity=momentum", "sparsity.momentum_decay=0.5"], output_dir=tmp_path / "run")
    callback = next(c for c in build(cfg).trainer.callbacks if isinstance(c, SparsityCallback))
    assert callback.options.rule.momentum_decay == 0.5 and callback.options.update_rule == "momentum"


def test_a_setting_of_another_rule_is_refused_while_composing():
    with pytest.raises(ConfigCompositionException, match="momentum_decay"):
        compose_config(["sparsity=rigl", "sparsity.momentum_decay=0.5"], output_dir=NOWHERE)


def test_switching_the_rule_by_key_ignores_the_settings_of_the_other_rule():
    options = SparsityOptions.from_values({"update_rule": "static", "tdm": {"every_epochs": 3}, "regrow_dropped": True})
    assert options.update_rule == "static" and type(options.rule).__name__ == "Options"
    with pytest.raises(ConfigError, match=r"sparsity\.densty: unknown key 'densty' \(did you mean 'density'\?\)"):
        SparsityOptions.from_values({"update_rule": "rigl", "densty": 0.1})


def test_a_bad_rule_setting_is_one_config_error_in_a_hand_written_loop():
    with pytest.raises(ConfigError, match=r"sparsity\.momentum_decay: must be in \[0, 1\)"):
        Sparsifier(_model(), update_rule="momentum", momentum_decay=1.5, density=0.5, total_steps=10)


def test_a_new_rule_with_one_setting_needs_only_its_class_and_registration():
    """What a user writes to add a rule: the class with its Options, and the registration."""

    @RULES.register("test_tempered_set")
    class TemperedSET(DropAndGrow):
        @dataclass
        class Options(DropAndGrow.Options):
            temperature: float = 2.0

        def grow_scores(self, sparsifier, name, position, dense_grad):
            return torch.rand(sparsifier.masks.weight(name).shape) * self.options.temperature

    try:
        register_sparsity_schemas()
        node = ConfigStore.instance().load("schema/sparsity/test_tempered_set.yaml").node
        assert node.temperature == 2.0 and node.update_rule == "test_tempered_set" and node.delta_t == 100
        sp = Sparsifier(_model(), update_rule="test_tempered_set", temperature=3.0, density=0.5, total_steps=10)
        assert isinstance(sp.rule, TemperedSET) and sp.rule.options.temperature == 3.0
        sp.update_now(drop_fraction=0.3)  # the rule really runs
        sp.check()
    finally:
        RULES._entries.pop("test_tempered_set")


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        (["method=sparcl"], "tdm"),  # SparCL selects its sparsity group
        (["method=sparcl", "sparsity=static"], "static"),  # ... which the command line still overrides
        (["sparsity=static", "method=sparcl"], "static"),
        (["method=sharp"], "dense"),  # SHARP keeps masks of its own
        (["method=packnet"], "dense"),  # ... and so does PackNet
        (["method=gdumb"], "dense"),  # GDumb needs masks that never change: dense by default ...
        (["method=gdumb", "sparsity=static"], "static"),  # ... or static
        (["method=er"], "rigl"),
    ],
)
def test_a_method_selects_the_sparsity_group_it_needs(overrides, rule):
    assert compose_config(overrides, output_dir=NOWHERE).sparsity.update_rule == rule


def test_every_registered_method_has_a_config_that_composes():
    register_all()
    for name in METHODS.names():
        cfg = compose_config([f"method={name}"], output_dir=NOWHERE)
        assert cfg.method._target_.rsplit(".", 1)[-1] in (METHODS.get(name).__name__, "SparCL")
