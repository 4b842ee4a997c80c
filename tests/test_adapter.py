"""Bottleneck adapters on tiny random models: closed-form parameter counts per variant, an untrained adapter
that changes nothing, the parallel adapter's wiring checked by hand, training that moves only adapters and head,
and a delta (safetensors + JSON) that loads back bit-identically."""

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers
from tiny import HIDDEN, TrainedRun, build_model, load_splits, tiny_config, train_recording
from transformers import AutoModel, AutoTokenizer, ModernBertConfig, ModernBertModel

from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone
from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import SequenceClassifier

LAYERS, LABELS = 2, 2
HEAD = HIDDEN * LABELS + LABELS


def _adapted(backbone: torch.nn.Module, options: dict | None = None) -> SequenceClassifier:
    model = SequenceClassifier(backbone, LABELS, "mean")
    strategy = get_strategy("adapter")
    strategy.apply(model, parse_options(strategy, options or {}))
    return model


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _batch(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(AutoTokenizer.from_pretrained(model_dir)(["good great film", "awful"], padding=True,
                                                         return_tensors="pt"))


@pytest.fixture(scope="module")
def bert_adapter(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "bert-adapter", "adapter"))


@pytest.mark.parametrize(("options", "insertions", "bottleneck"), [
    ({}, 2 * LAYERS, HIDDEN // 16),  # houlsby: after attention and after the feed-forward, in every block
    ({"variant": "pfeiffer", "reduction_factor": 4}, LAYERS, HIDDEN // 4),
    ({"variant": "parallel", "bottleneck_size": 5}, LAYERS, 5),
    ({"bottleneck_size": 3, "layers": [1]}, 2, 3),
])
def test_trainable_parameters_match_the_closed_form(tiny_bert: Path, options: dict, insertions: int,
                                                    bottleneck: int):
    model = _adapted(load_backbone(resolve_model(str(tiny_bert))), options)
    per_insertion = 2 * HIDDEN * bottleneck + HIDDEN + bottleneck  # down d x m + m, up m x d + d
    assert _trainable(model) == insertions * per_insertion + HEAD


def test_gpt2_and_llama_blocks_are_found(tiny_llama: Path):
    """GPT-2 implements its projections as Conv1D, Llama as o_proj/up_proj/down_proj."""
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, vocab_size=100))
    per_insertion = 2 * HIDDEN * 2 + HIDDEN + 2
    for backbone in (gpt2, AutoModel.from_pretrained(tiny_llama)):
        assert _trainable(_adapted(backbone, {"bottleneck_size": 2})) == 2 * LAYERS * per_insertion + HEAD


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer", "parallel"])
def test_an_untrained_adapter_changes_nothing(tiny_bert: Path, tiny_llama: Path, variant: str):
    for model_dir in (tiny_bert, tiny_llama):
        batch = _batch(model_dir)
        base = AutoModel.from_pretrained(model_dir).eval()
        adapted = _adapted(AutoModel.from_pretrained(model_dir), {"variant": variant}).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted.backbone(**batch).last_hidden_state, base(**batch).last_hidden_state,
                                       rtol=0, atol=0)


def test_the_parallel_adapter_reads_the_feed_forward_input(tiny_bert: Path, tiny_llama: Path):
    """BERT: LayerNorm(output.dense(h) + x + adapter(x)), where x is what entered intermediate.dense in the same
    block; Llama: mlp(x) + adapter(x)."""
    model = _adapted(AutoModel.from_pretrained(tiny_bert), {"variant": "parallel", "bottleneck_size": 4}).eval()
    adapter = model.adapters["layer1_ffn"]
    torch.nn.init.normal_(adapter.up.weight)
    layer = model.backbone.encoder.layer[1]
    seen = {}
    layer.intermediate.dense.register_forward_pre_hook(lambda module, args: seen.update(ffn_input=args[0]))
    layer.output.dense.register_forward_pre_hook(lambda module, args: seen.update(dense_input=args[0]))
    layer.output.register_forward_hook(lambda module, args, output: seen.update(output=output))
    with torch.no_grad():
        model.backbone(**_batch(tiny_bert))
        x = seen["ffn_input"]
        expected = layer.output.LayerNorm(layer.output.dense(seen["dense_input"]) + x
                                          + adapter.up(adapter.activation(adapter.down(x))))
    torch.testing.assert_close(seen["output"], expected)

    model = _adapted(AutoModel.from_pretrained(tiny_llama), {"variant": "parallel", "bottleneck_size": 4}).eval()
    adapter = model.adapters["layer0_ffn"]
    torch.nn.init.normal_(adapter.up.weight)
    mlp = model.backbone.layers[0].mlp
    mlp.register_forward_hook(lambda module, args, output: seen.update(mlp_input=args[0], mlp_output=output))
    with torch.no_grad():
        model.backbone(**_batch(tiny_llama))
        x = seen["mlp_input"]
        plain = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        torch.testing.assert_close(seen["mlp_output"], plain + adapter.up(adapter.activation(adapter.down(x))))


@pytest.mark.parametrize("variant", ["houlsby", "parallel"])
def test_activation_checkpointing_gives_the_same_gradients(tiny_bert: Path, variant: str):
    """Checkpointing reruns each block's forward during backward; the adapters' hooks read only their own call's
    arguments, so the gradients are those of the plain forward."""
    gradients, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = _adapted(AutoModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0), {"variant": variant})
        calls.append(0)
        for adapter in model.adapters.values():
            torch.nn.init.normal_(adapter.up.weight, std=0.1)
            adapter.register_forward_hook(lambda *_: calls.__setitem__(-1, calls[-1] + 1))
        if checkpointing:
            model.backbone.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        batch = _batch(tiny_bert)
        model.backbone(**batch).last_hidden_state.square().mean().backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert calls[1] == 2 * calls[0] > 0  # the checkpointed forward really ran again
    assert gradients[0].keys() == gradients[1].keys() and any("adapters." in name for name in gradients[0])
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


def test_a_deep_copy_runs_its_own_adapters(tiny_bert: Path):
    model = _adapted(AutoModel.from_pretrained(tiny_bert)).eval()
    twin = copy.deepcopy(model)
    torch.nn.init.normal_(twin.adapters["layer0_ffn"].up.weight)
    batch = _batch(tiny_bert)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        original, copied = model.embed(ids, mask), twin.embed(ids, mask)
        base = SequenceClassifier(AutoModel.from_pretrained(tiny_bert), LABELS, "mean").eval().embed(ids, mask)
    torch.testing.assert_close(original, base, rtol=0, atol=0)
    assert not torch.allclose(copied, base)


def test_unknown_blocks_and_layers_are_one_line_errors(tiny_bert: Path):
    config = ModernBertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                              intermediate_size=64, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              cls_token_id=1, sep_token_id=2)
    with pytest.raises(TunelabError, match=r"^adapter cannot find transformer blocks in model type 'modernbert': "
                                           r"it knows BERT, Llama, GPT-2, DistilBERT-style blocks; use lora instead$"):
        _adapted(ModernBertModel(config))
    with pytest.raises(TunelabError, match=r"^adapter: layer\(s\) \[2\] do not exist; this model has layers 0-1$"):
        _adapted(AutoModel.from_pretrained(tiny_bert), {"layers": [0, 2]})


def test_training_moves_only_adapters_and_head(bert_adapter: TrainedRun, tiny_bert: Path):
    trained = bert_adapter.predictor.model.state_dict()
    for name, tensor in AutoModel.from_pretrained(tiny_bert).state_dict().items():
        assert torch.equal(trained["backbone." + name], tensor), name
    _, label_map = load_splits(bert_adapter.config)
    transformers.set_seed(bert_adapter.config.training.seed)
    initial = build_model(bert_adapter.config, label_map).state_dict()
    moved = {name.split(".")[0] for name in trained if not torch.equal(trained[name], initial[name])}
    assert moved == {"adapters", "head"}
    assert bert_adapter.metrics["test"]["accuracy"] >= 0.75


def test_the_delta_is_safetensors_with_a_json_description(bert_adapter: TrainedRun):
    files = sorted(path.name for path in bert_adapter.path.iterdir())
    assert files == ["adapter_config.json", "config.yaml", "data_checks.json", "delta.safetensors", "labels.json",
                     "manifest.json", "metrics.json", "resources.json"]
    described = json.loads((bert_adapter.path / "adapter_config.json").read_text())
    assert described["variant"] == "houlsby"
    assert described["adapters"]["layer1_attention"] == {"size": HIDDEN, "bottleneck": HIDDEN // 16}
    assert sorted(described["adapters"]) == ["layer0_attention", "layer0_ffn", "layer1_attention", "layer1_ffn"]


def test_save_then_load_is_bit_identical(bert_adapter: TrainedRun):
    run = load_run(bert_adapter.path)
    trained = bert_adapter.predictor.model.state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in run.model.state_dict().items())
    texts = ["good great film", "awful terrible", "nice"]
    loaded = Predictor(run.model, run.tokenizer, run.targets, run.config.training.max_length)
    assert (loaded.logits(texts) == bert_adapter.predictor.logits(texts)).all()
