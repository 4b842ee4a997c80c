"""Merging runs' LoRA or (IA)^3 deltas into one: the arithmetic of each method, the merged bundle that reloads, its
report, and the inputs refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import TrainedRun, run_main, tiny_config, train_recording

from tunelab import api
from tunelab.compose.merge import merge_runs
from tunelab.compose.task_vectors import MergeMethod, disjoint_mean, drop, factorise, trim

PREFIX = "base_model.model."


def lora_updates(run: Path) -> dict[str, torch.Tensor]:
    """Each module's LoRA update, scaling * B A, computed from the run's files by hand."""
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    rank, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(rank) if config["use_rslora"] else alpha / rank
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    return {key.removeprefix(PREFIX).removesuffix(".lora_A.weight"):
            scaling * tensors[key.replace("lora_A", "lora_B")] @ tensor
            for key, tensor in tensors.items() if key.endswith("lora_A.weight")}


@pytest.fixture(scope="module")
def linear(bert_lora: TrainedRun, bert_lora_three: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The two LoRA runs (ranks 8 and 4, the second with rsLoRA's scaling) merged 0.7 / 0.3."""
    output = tmp_path_factory.mktemp("merged") / "linear"
    return merge_runs([f"two={bert_lora.path}", f"three={bert_lora_three.path}"], output,
                      MergeMethod("linear", weights=(0.7, 0.3)))


def test_a_linear_merge_is_the_weighted_sum_of_the_updates(linear: tuple, bert_lora: TrainedRun,
                                                           bert_lora_three: TrainedRun):
    bundle, report = linear
    first, second = lora_updates(bert_lora.path), lora_updates(bert_lora_three.path)
    merged = lora_updates(bundle.run("two"))
    assert set(merged) == set(first) == set(second) and len(merged) == 4  # query and value of 2 layers
    for module, update in merged.items():
        torch.testing.assert_close(update, 0.7 * first[module] + 0.3 * second[module], atol=1e-5, rtol=0)
    assert report["merge"]["rank"] == 12 and report["merge"]["factorisation_error"] < 1e-5
    assert lora_updates(bundle.run("three")).keys() == merged.keys()  # every task carries the one merged delta


def test_the_merged_bundle_reloads_and_reports_each_task(linear: tuple, bert_lora: TrainedRun,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture):
    bundle, report = linear
    assert bundle.merge["method"] == "linear" and yaml.safe_load((bundle.path / "bundle.yaml").read_text())["merge"]
    code, out, err = run_main(["eval", str(bundle.path), "--json"], monkeypatch, capsys)
    assert code == 0, err
    scores = json.loads(out)
    for name in ("two", "three"):
        task = report["tasks"][name]
        assert scores[name]["accuracy"] == pytest.approx(task["merged"]["accuracy"], abs=1e-6)  # a round trip
        assert task["kept"] == pytest.approx(task["merged"]["accuracy"] / task["single_task"]["accuracy"])
        metrics = json.loads((bundle.run(name) / "metrics.json").read_text())
        assert metrics["test"] == task["merged"] and metrics["base_and_head"] == task["base_and_head"]
    assert report["tasks"]["two"]["single_task"] == bert_lora.metrics["test"]
    labels = [set(row["probabilities"]) for row in (api.predict(bundle.run(name), ["good fine"])[0]
                                                    for name in ("two", "three"))]
    assert labels == [{"negative", "positive"}, {"negative", "neutral", "positive"}]  # each task its own head
    code, out, err = run_main(["eval", str(bundle.path)], monkeypatch, capsys)
    assert code == 0 and "in the bundle" in out, err


def test_cat_stacks_the_factors_and_equals_the_linear_merge(linear: tuple, bert_lora: TrainedRun,
                                                            bert_lora_three: TrainedRun, tmp_path: Path):
    cat, report = merge_runs([str(bert_lora.path), str(bert_lora_three.path)], tmp_path / "cat",
                             MergeMethod("cat", weights=(0.7, 0.3)), limit=4)
    merged, by_linear = lora_updates(cat.run("lora")), lora_updates(linear[0].run("two"))
    for module, update in merged.items():
        torch.testing.assert_close(update, by_linear[module], atol=1e-5, rtol=0)
    assert report["merge"]["rank"] == 12 and report["merge"]["factorisation_error"] == 0
    assert report["limit"] == 4 and report["tasks"]["lora"]["test_examples"] == 4


def test_a_rank_budget_keeps_the_top_singular_directions_and_reports_what_it_cut(bert_lora: TrainedRun,
                                                                                 bert_lora_three: TrainedRun,
                                                                                 tmp_path: Path):
    cut, report = merge_runs([str(bert_lora.path), str(bert_lora_three.path)], tmp_path / "rank2",
                             MergeMethod("task-arithmetic"), rank=2, limit=4)
    first, second = lora_updates(bert_lora.path), lora_updates(bert_lora_three.path)
    missed = total = 0.0
    for module, update in lora_updates(cut.run("lora")).items():
        exact = 0.3 * (first[module] + second[module])  # task arithmetic's default scale, weights 1
        values = torch.linalg.svdvals(exact)
        assert torch.linalg.matrix_rank(update, atol=1e-5) == 2
        missed, total = missed + float(values[2:].square().sum()), total + float(values.square().sum())
    assert report["merge"]["rank"] == 2
    assert report["merge"]["factorisation_error"] == pytest.approx(math.sqrt(missed / total), rel=1e-4)


def test_ia3_merges_the_scales_around_one(bert_ia3: TrainedRun, bert_ia3_three: TrainedRun, tmp_path: Path):
    merged, _ = merge_runs([str(bert_ia3.path), str(bert_ia3_three.path)], tmp_path / "ia3",
                           MergeMethod("linear", weights=(0.25, 0.5)), limit=4)
    files = [load_file(str(run / "adapter" / "adapter_model.safetensors"))
             for run in (bert_ia3.path, bert_ia3_three.path, merged.run("ia3"))]
    assert files[2].keys() == files[0].keys() and len(files[2]) == 8  # key, value and both output.dense, 2 layers
    for key, vector in files[2].items():
        torch.testing.assert_close(vector, 1 + 0.25 * (files[0][key] - 1) + 0.5 * (files[1][key] - 1))
    feedforward = yaml.safe_load((merged.run("ia3") / "config.yaml").read_text())["strategy"]["options"][
        "feedforward_modules"]
    assert feedforward == [key.removeprefix(PREFIX).removesuffix(".ia3_l") for key, vector in files[2].items()
                           if vector.shape[0] == 1] and feedforward


def test_trim_keeps_the_largest_entries():
    vector = torch.tensor([[0.1, -3.0], [2.0, -0.5]])
    assert trim(vector, 0.5).tolist() == [[0.0, -3.0], [2.0, 0.0]]
    assert trim(vector, 0.1).tolist() == [[0.0, -3.0], [0.0, 0.0]]  # at least one entry


def test_ties_elects_a_sign_and_averages_only_the_values_that_agree():
    vectors = [torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 1.0, 0.0]), torch.tensor([-1.0, -2.0, 0.0])]
    # sums: 3 (+), -3 (-), 0; entry 0 averages 1 and 3, entry 1 averages -2 and -2, entry 2 stays zero
    assert disjoint_mean(vectors).tolist() == [2.0, -2.0, 0.0]


def test_dare_drops_entries_and_rescales_the_rest_to_keep_the_expectation():
    generator = torch.Generator().manual_seed(0)
    vector = torch.ones(20_000)
    dropped = drop(vector, 0.25, generator)
    assert set(dropped.unique().tolist()) == {0.0, 4.0}
    assert float((dropped != 0).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(dropped.mean()) == pytest.approx(1.0, abs=0.05)


def test_factorise_is_exact_at_full_rank_and_pads_beyond():
    update = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    up, down, missed = factorise(update, 5)
    assert up.shape == (6, 5) and down.shape == (5, 3) and missed == pytest.approx(0, abs=1e-6)
    torch.testing.assert_close(up @ down, update, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def llama_lora(tiny_llama: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_llama, sentiment_csv, tmp_path_factory.mktemp("runs") / "llama-lora",
                                       "lora", epochs=1))


@pytest.fixture(scope="module")
def bert_dora(tiny_bert: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("runs") / "dora", "lora",
                                       {"use_dora": True}, epochs=1))


@pytest.mark.parametrize(("arguments", "message"), [
    (["{lora}", "{full}"], "{full} was trained with full, which leaves no weight update to merge: merge takes lora "
                           "or ia3 runs (`compose bundle` holds any strategy)"),
    (["{lora}", "{ia3}"], "the runs mix ia3 and lora: merge runs of one strategy, or bundle them with `compose "
                          "bundle`"),
    (["{lora}"], "merging needs at least two runs; `compose bundle` puts a single run in a bundle"),
    (["{lora}", "{three}", "--weights", "1,2,3"], "--weights has 3 values for 2 runs: give one per run, in the runs' "
                                                  "order"),
    (["{lora}", "{three}", "--weights", "1,x"], "--weights '1,x' is not a comma-separated list"),
    (["{lora}", "{three}", "--method", "cat", "--rank", "4"], "cat keeps every source's factors"),
    (["{lora}", "{three}", "--density", "0.5"], "--density applies to ties, dare-linear, dare-ties; linear keeps "
                                                "every entry"),
    (["{lora}", "{three}", "--method", "ties", "--density", "1.5"], "--density is the share of each task vector "
                                                                    "kept: between 0 (exclusive) and 1, not 1.5"),
    (["{lora}", "{three}", "--scale", "0.5"], "--scale applies to task-arithmetic, ties, dare-linear, dare-ties; "
                                              "linear combines with --weights only"),
    (["{lora}", "{three}", "--method", "svd"], "unknown merge method 'svd'; choose one of linear, task-arithmetic, "
                                               "ties, dare-linear, dare-ties, cat"),
    (["{ia3}", "{ia3_three}", "--method", "cat"], "cat concatenates LoRA factors; ia3 runs merge with linear"),
    (["{lora}", "{llama}"], "{llama} was trained on {llama_model} and {lora} on {lora_model}: a bundle holds runs of "
                            "one base model"),
    (["{lora}", "{dora}"], "{dora} is a DoRA run: its update rescales each weight's norm"),
    (["{lora}", "{missing}"], "{missing} is not a tunelab run directory"),
])
def test_bad_merge_input_is_one_line_and_writes_nothing(
        arguments: list[str], message: str, bert_lora: TrainedRun, bert_lora_three: TrainedRun,
        bert_full: TrainedRun, bert_ia3: TrainedRun, bert_ia3_three: TrainedRun, llama_lora: TrainedRun,
        bert_dora: TrainedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    names = {"lora": bert_lora.path, "three": bert_lora_three.path, "full": bert_full.path, "ia3": bert_ia3.path,
             "ia3_three": bert_ia3_three.path, "llama": llama_lora.path, "dora": bert_dora.path,
             "missing": tmp_path / "missing", "llama_model": llama_lora.config.model,
             "lora_model": bert_lora.config.model}
    output = tmp_path / "merged"
    code, _, err = run_main(["compose", "merge", *(argument.format(**names) for argument in arguments), "--output",
                             str(output)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: " + message.format(**names)), err
    assert len(err.strip().splitlines()) == 1 and not output.exists()
    assert not list(tmp_path.glob(".merged*"))  # no staging folder left behind


def test_the_cli_prints_each_tasks_scores(bert_lora: TrainedRun, bert_lora_three: TrainedRun, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    output = tmp_path / "ties"
    code, out, err = run_main(["compose", "merge", str(bert_lora.path), str(bert_lora_three.path), "--method", "ties",
                               "--density", "0.5", "--limit", "6", "--output", str(output)], monkeypatch, capsys)
    assert code == 0, err
    assert all(word in out for word in ("merged", "single-task", "base+head", "kept", "density 0.5"))
    record = yaml.safe_load((output / "bundle.yaml").read_text())["merge"]
    assert record["method"] == "ties" and record["density"] == 0.5 and record["scale"] == 0.3
    code, _, err = run_main(["compose", "merge", str(bert_lora.path), str(bert_lora_three.path), "--output",
                             str(output)], monkeypatch, capsys)
    assert code == 2 and "already exists" in err
