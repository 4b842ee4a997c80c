"""The real embedded defaults: the packaged MiniLM and SmolLM2, and the movie-snippets corpus. Run with
`pytest -m slow`."""

import shutil
from pathlib import Path

import pytest
import torch

from tunelab.assets import datasets
from tunelab.assets.models import resolve_model
from tunelab.data.loading import load_examples
from tunelab.modeling import load_backbone, load_tokenizer
from tunelab.tasks.classification import SequenceClassifier

pytestmark = pytest.mark.slow


def test_minilm_loads_with_mean_pooling_equal_to_a_hand_computation():
    spec = resolve_model("minilm")
    assert (spec.kind, spec.pooling) == ("encoder", "mean")
    tokenizer = load_tokenizer(spec)
    model = SequenceClassifier(load_backbone(spec), 2, spec.pooling).eval()
    assert model.backbone.config.hidden_size == 384
    assert sum(p.numel() for p in model.backbone.parameters()) == pytest.approx(22.7e6, rel=0.01)
    texts = ["A moving and beautiful film.", "Dull.", "The plot wanders, but the acting is superb throughout."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = model.embed(batch["input_ids"], batch["attention_mask"])
        hidden = model.backbone(**batch).last_hidden_state
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths[1] < lengths[0] < lengths[2]  # padding is really there to be ignored
    expected = torch.stack([hidden[row, :length].mean(dim=0) for row, length in enumerate(lengths)])
    torch.testing.assert_close(vectors, expected)
    # Mean pooling is what the sentence-transformers model was trained with: paraphrases lie close.
    pair = tokenizer(["A moving and beautiful film.", "A touching, lovely movie.", "The invoice is due on Monday."],
                     padding=True, return_tensors="pt")
    with torch.no_grad():
        unit = torch.nn.functional.normalize(model.embed(pair["input_ids"], pair["attention_mask"]), dim=-1)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3


def test_movie_snippets_catalog(tunelab_home: Path):
    """10,072 snippets outside the neutral band. Uses a copy of the archive from the user's cache (read only)."""
    cached = Path.home() / ".cache" / "tunelab" / "data" / datasets.VADER_ARCHIVE
    if not cached.exists():
        pytest.skip(f"{cached} not present; run `tunelab data list` once with network access")
    (tunelab_home / "data").mkdir(parents=True)
    shutil.copyfile(cached, tunelab_home / "data" / datasets.VADER_ARCHIVE)
    examples = load_examples("movie-snippets")
    assert len(examples) == 10072
    assert examples["label"].value_counts().to_dict() == {"negative": 5076, "positive": 4996}
    assert examples["text"].str.strip().ne("").all()


@pytest.fixture
def user_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's own cache, read only: SmolLM2 converted to fp32 and the VADER archive, both written before."""
    home = Path.home() / ".cache" / "tunelab"
    if not (home / "models" / "smollm2").exists() or not (home / "data" / datasets.VADER_ARCHIVE).exists():
        pytest.skip(f"{home} lacks smollm2 or the VADER archive; run `tunelab prompt --model smollm2` once")
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


def test_smollm2_zero_shot_reads_whole_prompt_tokens_and_classifies(user_cache: Path):
    """Encoding the template by pieces gives SmolLM2 the ids of the whole prompt, and the default template
    classifies movie snippets zero-shot well above chance (0.843 on the full test split)."""
    from tiny import load_splits

    from tunelab import build_config
    from tunelab.api import zero_shot
    from tunelab.recipes.classification import RECIPE
    from tunelab.strategies.registry import configure

    config = build_config({"model": "smollm2", "strategy": {"name": "zero-shot"}, "data": {"limit_eval": 200}})
    splits, label_map = load_splits(config)
    model, tokenizer = RECIPE.build(config, configure(config.strategy), label_map)
    texts = splits.test["text"].tolist()
    by_pieces = model.encoder(splits.test)["input_ids"]
    whole = tokenizer([f"Movie review: {text}\nThe sentiment of this review is" for text in texts],
                      add_special_tokens=True)["input_ids"]
    assert by_pieces == whole  # all 1,511 test snippets too (checked once; 200 keep the test short)
    assert zero_shot(config)["accuracy"] >= 0.78
