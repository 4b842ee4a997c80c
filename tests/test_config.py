"""RunConfig: nested dicts plus dotted overrides, `key=value` parsing, validation messages, YAML round trip."""

from pathlib import Path

import pytest

from tunelab.config import RunConfig, build_config, parse_override, read_yaml, to_yaml
from tunelab.errors import TunelabError


def test_build_config_merges_nested_dict_and_dotted_overrides():
    config = build_config(
        {"model": "some/model", "data": {"source": "x.csv", "text_column": "sentence"}, "training": {"epochs": 1}},
        {"training.epochs": 2, "training.learning_rate": 1e-3, "strategy.name": "linear-probe",
         "strategy.options.cache_features": False},
    )
    assert config.model == "some/model"
    assert config.data.source == "x.csv"
    assert config.data.text_column == "sentence"
    assert config.data.label_column == "label"  # untouched default
    assert config.training.epochs == 2
    assert config.training.learning_rate == 1e-3
    assert config.strategy.name == "linear-probe"
    assert config.strategy.options == {"cache_features": False}


def test_build_config_leaves_the_callers_dict_alone():
    base = {"training": {"epochs": 1}, "data": {"source": "x.csv"}}
    build_config(base, {"training.epochs": 2, "data.limit_train": 10})
    assert base == {"training": {"epochs": 1}, "data": {"source": "x.csv"}}


def test_defaults():
    config = build_config()
    assert config == RunConfig()
    assert (config.model, config.data.source, config.strategy.name) == ("minilm", "movie-snippets", "full")
    assert (config.data.test_size, config.data.validation_size, config.training.seed) == (0.15, 0.1, 42)
    assert config.output is None


@pytest.mark.parametrize(("text", "expected"), [
    ("training.epochs=2", ("training.epochs", 2)),
    ("training.learning_rate=0.001", ("training.learning_rate", 0.001)),
    ("strategy.options.cache_features=false", ("strategy.options.cache_features", False)),
    ("training.report_to=[tensorboard, mlflow]", ("training.report_to", ["tensorboard", "mlflow"])),
    ("data.source=a=b.csv", ("data.source", "a=b.csv")),  # only the first '=' splits
    (" model = minilm", ("model", "minilm")),
])
def test_parse_override_reads_yaml_scalars(text, expected):
    assert parse_override(text) == expected


def test_exponent_without_dot_still_validates_as_a_float():
    # YAML 1.1 reads `1e-4` as a string; the typed config turns it into the number the user meant.
    assert build_config({}, dict([parse_override("training.learning_rate=1e-4")])).training.learning_rate == 1e-4


@pytest.mark.parametrize("text", ["training.epochs", "=2", "", "training.report_to=[tensorboard"])
def test_parse_override_rejects_bad_text(text):
    with pytest.raises(TunelabError, match="override"):
        parse_override(text)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"training.epoch": 2}, "training.epoch"),
    ({"modell": "x"}, "modell"),
    ({"strategy.nme": "full"}, "strategy.nme"),
])
def test_unknown_key_is_named(overrides, named):
    with pytest.raises(TunelabError) as error:
        build_config({}, overrides)
    assert f"unknown setting '{named}'" in str(error.value)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"training.epochs": 0}, "training.epochs"),
    ({"training.batch_size": "many"}, "training.batch_size"),
    ({"data.test_size": -0.1}, "data.test_size"),
    ({"model": "  "}, "model"),
    ({"task": "translation"}, "task"),
])
def test_invalid_value_names_the_setting(overrides, named):
    with pytest.raises(TunelabError, match=rf"^config: {named}: "):
        build_config({}, overrides)


def test_override_below_a_plain_value_is_an_error():
    with pytest.raises(TunelabError, match="'model' is not a section"):
        build_config({"model": "minilm"}, {"model.name": "x"})


def test_yaml_round_trip(tmp_path: Path):
    config = build_config({"model": "/models/tiny", "output": str(tmp_path / "run")}, {
        "data.source": "data.jsonl", "data.limit_train": 50, "strategy.name": "linear-probe",
        "strategy.options.cache_features": False, "training.epochs": 1.5, "training.report_to": ["tensorboard"],
    })
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config), encoding="utf-8")
    again = build_config(read_yaml(path))
    assert again == config
    assert again.output == tmp_path / "run"
    assert again.training.epochs == 1.5


def test_read_yaml_errors(tmp_path: Path):
    with pytest.raises(TunelabError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="not valid YAML"):
        read_yaml(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="mapping"):
        read_yaml(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert read_yaml(empty) == {}


def test_example_configs_are_valid():
    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        assert build_config(read_yaml(path)).output is not None


def test_prompt_example_parses_into_template_words_and_pet_options():
    from tunelab.prompting.template import Template
    from tunelab.prompting.verbalizer import Verbalizer
    from tunelab.strategies.registry import get_strategy, parse_options

    config = build_config(read_yaml(Path(__file__).parents[1] / "examples" / "movie-snippets-pet.yaml"))
    assert Template.parse(config.prompt.template).fields == ["text"]
    assert Verbalizer.build(config.prompt.verbalizer, ["negative", "positive"]).words["positive"] == ("positive",)
    assert parse_options(get_strategy("pet"), config.strategy.options).tune == "full"
    assert config.data.shots == 32
