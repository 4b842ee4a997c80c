"""A finished black-box run, read back: how it asks the model about new texts (its prompt, its soft prompt, its
label words, the LoRA `mezo` trained), so that `predict` and `eval` answer through any endpoint as the search did.
A soft prompt goes before the template (`mezo`), or, with `soft_lengths`, in blocks in place of the template's
words (`bbt`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from safetensors.numpy import load_file

from tunelab.blackbox.bbt import SOFT_PROMPT_FILE
from tunelab.blackbox.endpoints import Endpoint, Prompt, SoftPrompt
from tunelab.blackbox.prompts import LabelPrompts
from tunelab.blackbox.search import Candidate, PromptSearch, SearchSettings
from tunelab.config import RunConfig, build_config
from tunelab.errors import TunelabError
from tunelab.runs import BLACKBOX_FILE, verify_manifest
from tunelab.tasks.classification import LabelMap
from tunelab.tasks.generation import CausalLM


def is_blackbox_run(path: Path) -> bool:
    return (path / BLACKBOX_FILE).exists()


class FoundPrompt:
    def __init__(self, path: Path):
        if not is_blackbox_run(path):
            raise TunelabError(f"{path} is not a black-box run (no {BLACKBOX_FILE})")
        verify_manifest(path)
        self.path = path
        self.record: dict[str, Any] = yaml.safe_load((path / BLACKBOX_FILE).read_text(encoding="utf-8"))
        self.config: RunConfig = build_config(self.record["config"])
        labels = list(self.record["verbalizer"])
        self.prompts = LabelPrompts.build(self.record["template"], self.record["verbalizer"], labels)
        self.soft_prompt: SoftPrompt | None = None
        if "soft_prompt" in self.record:
            self.soft_prompt = load_file(str(path / SOFT_PROMPT_FILE))["soft_prompt"]
        if "soft_lengths" in self.record:
            self.prompts = LabelPrompts(self.prompts.template.softened(), self.prompts.verbalizer)
            self.soft_prompt = np.split(self.soft_prompt, np.cumsum(self.record["soft_lengths"])[:-1])

    def adapt(self, model: CausalLM) -> CausalLM:
        """The run's base `model` with the LoRA its search trained, where it trained one (`mezo --tune lora`): only
        the model in this process then answers as the search did."""
        if "adapter" in self.record:
            from peft import PeftModel

            model.backbone = PeftModel.from_pretrained(model.backbone, self.path / self.record["adapter"])
        return model

    def asked(self, rows: pd.DataFrame, endpoint: Endpoint) -> list[Prompt]:
        """Each row's prompt as the run found it."""
        if self.record["method"] != "search":  # the template, with the soft prompt where it goes
            return self.prompts.prompts(rows)
        search = PromptSearch(endpoint, self.prompts, SearchSettings())
        search.train = pd.DataFrame(self.record["demonstrations"], columns=[*self.prompts.template.fields, "label"])
        found = Candidate(self.record["instruction"], self.record["template"],
                          tuple(range(len(search.train))))
        return search.render(found, rows)

    def label_logprobs(self, rows: pd.DataFrame, endpoint: Endpoint) -> np.ndarray:
        """(rows, labels) log-probabilities."""
        return self.prompts.ask(endpoint, self.asked(rows, endpoint), self.soft_prompt)

    def score(self, examples: pd.DataFrame, endpoint: Endpoint, source: str) -> dict[str, Any]:
        """Classification metrics (accuracy, macro-F1, per class) on labelled `examples`."""
        return LabelMap(self.prompts.labels).metrics(self.label_logprobs(examples, endpoint),
                                                     examples["label"].tolist(), source)

    def predict(self, texts: list[str], endpoint: Endpoint) -> list[dict[str, Any]]:
        """For each text: the label and every label's probability, as `predict` gives them for a classifier."""
        fields = self.prompts.template.fields
        if fields != ["text"]:
            raise TunelabError(f"this run's template reads {', '.join(fields)}: predict takes a single text")
        probabilities = np.exp(self.label_logprobs(pd.DataFrame({"text": texts}), endpoint))
        labels = self.prompts.labels
        return [{"text": text, "label": labels[int(row.argmax())],
                 "probabilities": dict(zip(labels, map(float, row), strict=True))}
                for text, row in zip(texts, probabilities, strict=True)]
