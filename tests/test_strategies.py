"""Strategies: the registry, what each one freezes, option validation, and refusing a second application."""

from pathlib import Path

import pytest
from tiny import HIDDEN

from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone
from tunelab.strategies.base import count_parameters, delta_state_dict, freeze_all_but
from tunelab.strategies.catalog import CATALOG
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import SequenceClassifier


@pytest.fixture
def classifier(tiny_bert: Path) -> SequenceClassifier:
    spec = resolve_model(str(tiny_bert))
    return SequenceClassifier(load_backbone(spec), 3, spec.pooling)


def _applied(model: SequenceClassifier, name: str, options: dict | None = None) -> SequenceClassifier:
    strategy = get_strategy(name)
    strategy.apply(model, parse_options(strategy, options or {}))
    return model


def test_every_catalog_row_loads_its_strategy():
    for name, row in CATALOG.items():
        strategy = get_strategy(name)
        assert strategy.name == name and strategy.entry is row and get_strategy(name) is strategy
        options = strategy.Options(sources=["a", "b"]) if row.composes else strategy.Options()
        learning_rate, epochs = strategy.training_defaults(options)
        assert (learning_rate > 0 and epochs > 0) == (row.epochs > 0)


def test_unknown_strategy_lists_the_names():
    with pytest.raises(TunelabError) as error:
        get_strategy("lora-but-misspelt")
    assert str(error.value) == f"unknown strategy 'lora-but-misspelt'; choose one of {', '.join(CATALOG)}"
    assert str(error.value).startswith("unknown strategy 'lora-but-misspelt'; choose one of full, linear-probe, lora,")


def test_full_trains_every_parameter(classifier: SequenceClassifier):
    _applied(classifier, "full")
    assert all(parameter.requires_grad for parameter in classifier.parameters())
    trainable, total = count_parameters(classifier)
    assert trainable == total == sum(p.numel() for p in classifier.parameters())


def test_linear_probe_trains_only_the_head(classifier: SequenceClassifier):
    _applied(classifier, "linear-probe")
    trainable = [name for name, parameter in classifier.named_parameters() if parameter.requires_grad]
    assert trainable == ["head.1.weight", "head.1.bias"]
    assert count_parameters(classifier)[0] == HIDDEN * 3 + 3


@pytest.mark.parametrize(("name", "options", "prefixes", "on_features"), [
    ("full", {}, ("backbone.", "head."), False),
    ("linear-probe", {}, ("head.",), True),
    ("linear-probe", {"cache_features": False}, ("head.",), False),
])
def test_prefixes_and_feature_training(name: str, options: dict, prefixes: tuple, on_features: bool):
    strategy = get_strategy(name)
    parsed = parse_options(strategy, options)
    assert strategy.trainable_prefixes(parsed) == prefixes
    assert strategy.trains_on_features(parsed) is on_features


@pytest.mark.parametrize(("first", "second"), [("full", "full"), ("linear-probe", "full"),
                                               ("full", "linear-probe")])
def test_applying_twice_is_an_error(classifier: SequenceClassifier, first: str, second: str):
    _applied(classifier, first)
    with pytest.raises(TunelabError, match=f"strategy '{first}' is already applied.*fresh model for '{second}'"):
        _applied(classifier, second)


def test_invalid_option_value():
    with pytest.raises(TunelabError, match="^strategy linear-probe: option 'cache_features': "):
        parse_options(get_strategy("linear-probe"), {"cache_features": "maybe"})


@pytest.mark.parametrize(("name", "options", "message"), [
    ("linear-probe", {"cache_feature": True},
     "strategy linear-probe has no option 'cache_feature'; its options: cache_features"),
    ("full", {"rank": 8}, "strategy full has no option 'rank'; its options: none"),
])
def test_unknown_option_names_the_known_ones(name: str, options: dict, message: str):
    with pytest.raises(TunelabError) as error:
        parse_options(get_strategy(name), options)
    assert str(error.value) == message


@pytest.mark.parametrize(("text", "value"), [(True, True), ("false", False), ("no", False), (1, True)])
def test_option_values_are_coerced(text, value):
    assert parse_options(get_strategy("linear-probe"), {"cache_features": text}).cache_features is value


def test_freezing_nothing_is_an_error(classifier: SequenceClassifier):
    with pytest.raises(TunelabError, match="no parameter matches"):
        freeze_all_but(classifier, ("adapter.",))


def test_delta_holds_exactly_the_prefixed_tensors(classifier: SequenceClassifier):
    delta = delta_state_dict(classifier, ("head.",))
    assert sorted(delta) == ["head.1.bias", "head.1.weight"]
    assert delta["head.1.weight"].shape == (3, HIDDEN)
    assert delta["head.1.weight"].equal(classifier.head[1].weight.detach())
    full = delta_state_dict(classifier, ("backbone.", "head."))
    assert set(full) == set(classifier.state_dict())
