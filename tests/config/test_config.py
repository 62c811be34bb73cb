"""agrl.config: validation names the field, TOML and override coercion, the one builder."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from agrl.config import (
    METHOD_PRESETS,
    Config,
    ConfigError,
    LossConfig,
    ModelConfig,
    SamplingConfig,
    apply_overrides,
    build_config,
    config_from_dict,
    config_to_dict,
    load_config,
    method_preset,
    with_method,
)


@pytest.mark.parametrize(
    "override,field",
    [
        ("model.num_layers=0", "model.num_layers"),
        ("model.num_kv_heads=3", "model.num_kv_heads"),  # does not divide 4 heads
        ("sampling.group_size=1", "sampling.group_size"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("sampling.prompt_buckets=64,32", "sampling.prompt_buckets"),
        ("loss.eps_high=0.1", "loss.eps_high"),  # < eps_low 0.2
        ("loss.aggregation=mean", "loss.aggregation"),
        ("reward.format_fail=0.5", "reward.format_fail"),
        ("guidance.tau=1.5", "guidance.tau"),
        ("advantage.ddof=2", "advantage.ddof"),
        ("train.steps=ten", "train.steps"),
        ("train.method=ppo", "train.method"),
        ("optim.lr=-1", "optim.lr"),
        ("model.nope=1", "model.nope"),
        ("nope.x=1", "nope"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"^{field}\b"):
        build_config(overrides=[override])


def test_override_strings_are_coerced_by_type():
    cfg = build_config(
        overrides=[
            "sampling.prompt_buckets=16,32",
            "loss.dual_clip=3",
            "loss.kl_clamp=none",
            "guidance.enabled=false",
            "model.rope_theta=5e5",
            "train.steps=7",
        ]
    )
    assert cfg.sampling.prompt_buckets == (16, 32)
    assert cfg.loss.dual_clip == 3.0 and cfg.loss.kl_clamp is None
    assert cfg.guidance.enabled is False and cfg.model.rope_theta == 5e5
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        build_config(overrides=["train.steps"])
    with pytest.raises(ConfigError, match=r"train.steps=1.5: must be an int"):
        config_from_dict({"train": {"steps": 1.5}})


def test_architecture_decides_its_switches():
    assert ModelConfig(arch="qwen2").qkv_bias and not ModelConfig(arch="qwen2").qk_norm
    assert ModelConfig(arch="qwen3").qk_norm and not ModelConfig(arch="qwen3").qkv_bias
    assert not ModelConfig(arch="llama").qk_norm and not ModelConfig(arch="llama").qkv_bias
    assert ModelConfig(arch="llama", qk_norm=True).qk_norm


def test_frozen_and_hashable_so_a_valid_static_jit_argument():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.kl_beta = 0.0  # type: ignore[misc]
    assert hash(cfg) == hash(Config()) and cfg == Config()
    f = jax.jit(lambda x, c: x * c.kl_beta, static_argnums=1)
    assert float(f(2.0, LossConfig(kl_beta=0.5))) == 1.0


def test_layers_preset_base_file_overrides(tmp_path):
    """preset < base < file < overrides; the method comes from whichever layer names it."""
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nmethod = "grpo"\nsteps = 5\n[reward]\nw_label = 2.0\n')
    base = {"train": {"steps": 3, "seed": 4}, "reward": {"w_label": 3.0}}
    cfg = build_config(toml, ["reward.w_step=0.25"], base=base)
    assert cfg.train.method == "grpo" and not cfg.guidance.enabled  # the grpo preset
    assert cfg.reward.gate == "none"  # preset, untouched by the user
    assert cfg.reward.w_step == 0.25  # the user's override beats the preset's 0.0
    assert cfg.train.steps == 5 and cfg.train.seed == 4 and cfg.reward.w_label == 2.0
    assert base == {"train": {"steps": 3, "seed": 4}, "reward": {"w_label": 3.0}}  # unchanged


def test_the_python_api_applies_the_method_preset():
    """train.method=grpo means GRPO from Python as on the command line."""
    for cfg in (
        load_config(None, ["train.method=grpo"]),
        build_config(overrides=["train.method=grpo"]),
    ):
        assert cfg.train.method == "grpo"
        assert cfg.reward.w_step == 0.0 and cfg.reward.gate == "none"
        assert not cfg.guidance.enabled
    assert load_config() == Config()  # agrl: the defaults themselves


def test_with_method_forces_the_preset_and_keeps_the_rest():
    cfg = build_config(overrides=["reward.w_step=0.3", "optim.lr=1e-3"])
    for name, preset in METHOD_PRESETS.items():
        m = with_method(cfg, name)
        assert m.train.method == name and m.optim.lr == 1e-3
        data = config_to_dict(m)
        for key, value in preset.items():
            section, field = key.split(".")
            assert data[section][field] == value, (name, key)
    assert with_method(cfg, "rrs_only").reward.w_step == 0.3  # not in its preset


def test_method_preset_is_a_copy_and_names_bad_methods():
    p = method_preset("grpo")
    p["reward.w_step"] = 9.0
    assert method_preset("grpo")["reward.w_step"] == 0.0
    with pytest.raises(ConfigError, match="train.method='dpo'"):
        method_preset("dpo")


def test_toml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        build_config(bad)


def test_apply_overrides_leaves_its_input_alone():
    data = {"world": {"teacher": {"label_noise": 0.1}}}
    out = apply_overrides(data, ["world.teacher.label_noise=0.2", "train.steps=3"])
    assert data == {"world": {"teacher": {"label_noise": 0.1}}}
    assert out == {"world": {"teacher": {"label_noise": "0.2"}}, "train": {"steps": "3"}}


def test_round_trip_through_a_dict():
    cfg = build_config(overrides=["sampling.prompt_buckets=8,16", "train.method=agr_only"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert SamplingConfig().prompt_buckets == (32, 48, 64, 96, 128)


@pytest.mark.parametrize(
    "old,new",
    [
        ("guidance.loss_mode=mask", "loss.forced_tokens"),
        ("guidance.offpolicy_gamma=0.2", "loss.offpolicy_gamma"),
        ("loss.difficulty_filter=0.9", "advantage.difficulty_filter"),
    ],
)
def test_moved_fields_say_where_they_went(old, new):
    """Fields live in the section that consumes them; an old config names the new place."""
    with pytest.raises(ConfigError, match=rf"moved to {new}"):
        build_config(overrides=[old])
    section, field = new.split(".")
    cfg = build_config(overrides=[f"{new}={old.split('=')[1]}"])
    assert str(getattr(getattr(cfg, section), field)) in old


def test_sft_weight_decay_overrides_the_shared_optimizer_only_for_sft():
    from agrl.train.loop import optim_with

    cfg = load_config(None, ["optim.weight_decay=0.01", "sft.weight_decay=1.0"])
    sft = optim_with(cfg.sft.lr, cfg.sft.warmup_frac, cfg.optim, cfg.sft.weight_decay)
    assert (sft.weight_decay, sft.lr, cfg.optim.weight_decay) == (1.0, cfg.sft.lr, 0.01)
    unset = load_config(None, ["optim.weight_decay=0.01"])
    assert unset.sft.weight_decay is None
    assert optim_with(1e-3, 0.0, unset.optim, unset.sft.weight_decay).weight_decay == 0.01
    with pytest.raises(ConfigError, match="sft.weight_decay"):
        load_config(None, ["sft.weight_decay=-1"])
