"""BitFit: only the backbone's biases and the head train, and a step moves nothing else (test_every_strategy.py
trains, saves and reloads it with the others)."""

from pathlib import Path

import torch

from tunelab.assets.models import resolve_model
from tunelab.modeling import load_backbone
from tunelab.strategies.registry import get_strategy
from tunelab.tasks.classification import SequenceClassifier


def test_only_biases_and_the_head_train_and_one_step_moves_nothing_else(tiny_bert: Path):
    spec = resolve_model(str(tiny_bert))
    model = SequenceClassifier(load_backbone(spec), 2, spec.pooling)
    bitfit = get_strategy("bitfit")
    bitfit.apply(model, bitfit.Options())
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith("head.") or name.endswith(".bias") for name in trainable)
    assert any(name.startswith("backbone.") for name in trainable)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 1000, (4, 8))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    moved = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert moved and moved <= trainable

