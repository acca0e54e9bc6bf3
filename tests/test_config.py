"""The config object: defaults, YAML, --set, presets under the user's layer, one-line errors."""

from __future__ import annotations

import pytest

from metatune.config import Config, load_config, parse_set, preset_names
from metatune.errors import MetatuneError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def error_of(**kwargs) -> str:
    with pytest.raises(MetatuneError) as e:
        load_config(**kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_defaults():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.data.max_input_tokens == 2048 and cfg.data.max_target_tokens == 512
    assert cfg.data.input_style == "prompt"
    assert {"keywords", "abstract", "subject", "uri", "identifier.uri", "isRelatedWith"} <= set(cfg.data.exclude_fields)
    assert cfg.training.mode == "trainer"


def test_set_values_are_parsed_to_their_types():
    assert parse_set(["training.max_steps=7", "a.b.c=x"]) == {"training": {"max_steps": 7}, "a": {"b": {"c": "x"}}}
    cfg = load_config(
        sets=[
            "training.max_steps=7",
            "training.learning_rate=3e-4",  # YAML 1.1 reads this as text; the config turns it into a float
            "data.general_examples=true",
            "data.include_fields=[title, creator]",
            "data.fallback_type=general",
            "data.hub_dataset=null",
            "model.revision=2024",  # a number where text is expected
        ]
    )
    assert cfg.training.max_steps == 7 and isinstance(cfg.training.max_steps, int)
    assert cfg.training.learning_rate == pytest.approx(3e-4) and isinstance(cfg.training.learning_rate, float)
    assert cfg.data.general_examples is True
    assert cfg.data.include_fields == ["title", "creator"]
    assert cfg.data.fallback_type == "general"
    assert cfg.data.hub_dataset is None
    assert cfg.model.revision == "2024"


def test_yaml_then_flags_then_set(tmp_path):
    config = write(
        tmp_path / "c.yaml",
        """
model: {name: some-org/some-model}
data: {path: a.json, max_input_tokens: 1024}
training: {learning_rate: 1.0e-3, output_dir: runs/a, max_steps: 3}
""",
    )
    cfg = load_config(config, sets=["training.max_steps=9"], data="b.json")
    assert cfg.model.name == "some-org/some-model"
    assert cfg.data.max_input_tokens == 1024  # from the YAML
    assert cfg.data.path == "b.json"  # --data over the YAML
    assert cfg.training.output_dir == "runs/a"
    assert cfg.training.max_steps == 9  # --set over the YAML
    assert cfg.data.max_target_tokens == 512  # untouched default
    cfg = load_config(config, sets=["data.path=c.json"], data="b.json", output="runs/b")
    assert cfg.data.path == "c.json"  # --set over --data
    assert cfg.training.output_dir == "runs/b"


def test_preset_layer_sits_under_the_user_layer(tmp_path):
    assert {"smollm2-135m", "llama", "t5", "led", "nuextract", "qwen", "gemma", "mistral"} <= set(preset_names())
    llama = load_config(model="llama")
    assert llama.model.quantization == "4bit" and llama.model.lora.enabled
    assert llama.training.learning_rate == pytest.approx(2e-4)  # the preset's, not the default 5e-5
    assert load_config(model="nuextract").data.input_style == "schema"

    config = write(tmp_path / "c.yaml", "model: {name: llama, quantization: none}\ntraining: {learning_rate: 1.0e-5}\n")
    cfg = load_config(config)
    assert cfg.model.quantization == "none"  # the user's YAML wins over the preset
    assert cfg.model.lora.enabled  # what the user did not say still comes from the preset
    assert cfg.training.learning_rate == pytest.approx(1e-5)
    assert load_config(config, sets=["model.lora.enabled=false"]).model.lora.enabled is False

    # a Hub id or a path is not a preset: no preset layer
    assert load_config(model="org/llama").training.learning_rate == Config().training.learning_rate


@pytest.mark.parametrize(
    "yaml_text, key, suggestion",
    [
        ("traning: {max_steps: 3}\n", "traning", "training"),
        ("training: {learning_rat: 1.0e-4}\n", "training.learning_rat", "training.learning_rate"),
        ("model: {lora: {rank: 8}}\n", "model.lora.rank", None),
        ("model: {lora: {alfa: 8}}\n", "model.lora.alfa", "model.lora.alpha"),
        ("training: {max_input_tokens: 256}\n", "training.max_input_tokens", "data.max_input_tokens"),
    ],
)
def test_unknown_yaml_key_is_one_line_with_the_nearest_name(tmp_path, yaml_text, key, suggestion):
    config = write(tmp_path / "c.yaml", yaml_text)
    message = error_of(config_file=config)
    assert message.startswith(str(config))
    assert f"unknown key '{key}'" in message
    if suggestion:
        assert message.endswith(f"did you mean '{suggestion}'?")


def test_unknown_set_key():
    assert error_of(sets=["data.max_input_token=128"]).endswith("did you mean 'data.max_input_tokens'?")


@pytest.mark.parametrize(
    "sets, where",
    [
        (["data.max_input_tokens=0"], "data.max_input_tokens"),
        (["data.max_target_tokens=-5"], "data.max_target_tokens"),
        (["training.per_device_train_batch_size=0"], "training.per_device_train_batch_size"),
        (["training.learning_rate=0"], "training.learning_rate"),
        (["training.lr_scheduler_type=bogus"], "training.lr_scheduler_type"),
        (["data.input_style=xml"], "data.input_style"),
        (["data.include_fields=[title, abstract]"], "abstract"),
        (["training.max_steps=many"], "training.max_steps"),
    ],
)
def test_bad_values_are_one_line_errors(sets, where):
    assert where in error_of(sets=sets)


def test_file_errors(tmp_path):
    assert "config file not found" in error_of(config_file=tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "training: {max_steps: [1, 2\n")
    assert error_of(config_file=bad).startswith(f"{bad}: invalid YAML")
    listed = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert "mapping" in error_of(config_file=listed)
    assert "expected section.key=value" in error_of(sets=["training.max_steps"])


@pytest.mark.parametrize("value", [-5, 0, -2])
def test_max_steps_is_minus_one_or_positive(value):
    with pytest.raises(
        MetatuneError,
        match=r"training.max_steps: Value error, must be -1 \(train num_train_epochs epochs\) or at least 1",
    ):
        load_config(sets=[f"training.max_steps={value}"])
    assert load_config(sets=["training.max_steps=-1"]).training.max_steps == -1
    assert load_config(sets=["training.max_steps=3"]).training.max_steps == 3


def test_a_section_given_as_a_value_is_not_dropped_by_set(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training: 5\n", encoding="utf-8")
    with pytest.raises(MetatuneError, match=r"^training: expected a mapping of settings, got 5$"):
        load_config(config, ["training.max_steps=3"])
    with pytest.raises(MetatuneError, match="training"):
        load_config(config)  # alone, validation names it too
    config.write_text("training:\n", encoding="utf-8")  # an empty section is fine
    assert load_config(config, ["training.max_steps=3"]).training.max_steps == 3
