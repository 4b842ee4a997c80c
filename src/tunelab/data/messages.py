"""Chat data: a column of conversations, each a list of `{role, content}` messages (the format of TRL and of chat
templates), validated with one-line errors that name the source and the row.

One validator serves every reader of conversations (`--task generation`, `rlhf sft`), so a file that one accepts
the other accepts too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from tunelab.data.loading import read_source, select_columns
from tunelab.errors import TunelabError

ROLES = ("system", "user", "assistant")
SHAPE = "messages must be a non-empty list of {role, content} objects"


def check_conversation(messages: Any, where: str) -> list[dict[str, str]]:
    """The conversation as plain `{role, content}` dicts (Parquet gives arrays of structs), or an error at `where`."""
    if isinstance(messages, np.ndarray):
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else f"a {type(messages).__name__}"
        raise TunelabError(f"{where}: {SHAPE}; got {got}")
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise TunelabError(f"{where}: {SHAPE}; message {turn} is {_describe(message)}")
        if message["role"] not in ROLES:
            raise TunelabError(f"{where}: message {turn} has role '{message['role']}'; roles are {', '.join(ROLES)} "
                               f"(ShareGPT's from/value with human/gpt must be converted)")
        if not isinstance(message["content"], str):
            raise TunelabError(f"{where}: message {turn} has no text content (got {message['content']!r})")
    if not any(message["role"] == "assistant" for message in messages):
        raise TunelabError(f"{where}: the conversation has no assistant turn, so there is no answer to learn from")
    if messages[0]["role"] == "assistant":
        raise TunelabError(f"{where}: the conversation opens with an assistant turn; start it with a system or "
                           f"user message the answer replies to")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _describe(message: Any) -> str:
    if isinstance(message, dict):
        missing = sorted({"role", "content"} - set(message))
        return f"missing {' and '.join(missing)}"
    return f"a {type(message).__name__}, not an object"


def check_messages(column: Iterable[Any], source: str) -> list[list[dict[str, str]]]:
    """Every row's conversation, validated; rows count from 1 as a user reads the file."""
    return [check_conversation(messages, f"{source}: row {row}") for row, messages in enumerate(column, start=1)]


def load_generation_examples(source: str, prompt_column: str = "prompt", completion_column: str = "completion",
                             messages_column: str = "messages") -> pd.DataFrame:
    """Generation data: chat conversations when the source has `messages_column` (column `messages`), else
    prompt/completion pairs (columns `prompt`, `completion`); either with `row`, the row in the source, so errors
    found after the shuffled split still name it. A `label` column is kept, so the splits stay stratified by it."""
    frame = read_source(source)
    if messages_column in frame.columns:
        if frame.empty:
            raise TunelabError(f"{source} holds no examples")
        examples = pd.DataFrame({"messages": check_messages(frame[messages_column], source)})
    else:
        examples = select_columns(frame, {"prompt": prompt_column, "completion": completion_column}, source)
    examples["row"] = np.arange(1, len(frame) + 1)
    if "label" in frame.columns:
        examples["label"] = frame["label"].astype(str).to_numpy()
    return examples
