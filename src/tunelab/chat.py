"""`tunelab chat`: a conversation in the terminal with a trained causal LM.

Each turn, the whole history goes through the model's chat template, as the model was trained to read it, and
the answer is printed token by token as it is generated (transformers' `TextStreamer`), through the same
`complete` that `tunelab generate` and ROUGE-L use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from transformers import TextStreamer

from tunelab.errors import TunelabError
from tunelab.tasks.conversation import Message, context_ids, user
from tunelab.tasks.generation import CausalLM, complete

YOU, MODEL = "you> ", "model> "
HELP = "/reset forgets the conversation, /exit or Ctrl-D ends it, Ctrl-C stops an answer"


@dataclass
class Conversation:
    """The turns so far, after an optional system message that /reset keeps."""

    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns


def reply(model: CausalLM, tokenizer: Any, conversation: Conversation, text: str, max_new_tokens: int,
          temperature: float, seed: int, streamer: TextStreamer | None = None) -> str:
    """The model's answer to `text` after the conversation so far; both join the conversation once the answer is
    complete, so an answer cut short (Ctrl-C) leaves the conversation as it was."""
    asked = [*conversation.messages(), user(text)]
    answer = complete(model, tokenizer, [context_ids(tokenizer, asked)], max_new_tokens, temperature, seed,
                      streamer)[0]
    conversation.turns += [user(text), {"role": "assistant", "content": answer}]
    return answer


def chat(model: CausalLM, tokenizer: Any, system: str | None, max_new_tokens: int, temperature: float,
         seed: int) -> None:
    """Read a line, answer it, until /exit or end of input; /reset starts the conversation again."""
    if not tokenizer.chat_template:
        raise TunelabError("this run's model has no chat template, so it knows no form for a conversation: use "
                           "`tunelab generate RUN PROMPT` for single prompts")
    with contextlib.suppress(ImportError):  # line editing and history for input(); Windows has no readline
        import readline  # noqa: F401
    conversation = Conversation(system)
    if system:  # a template that takes no system message says so now, not at the first answer
        context_ids(tokenizer, [*conversation.messages(), user("")], "--system")
    print(HELP)
    while True:
        try:
            line = input(YOU).strip()
        except EOFError:  # Ctrl-D
            print()
            return
        except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
            print()
            continue
        if line == "/exit":
            return
        if line == "/reset":
            conversation.turns.clear()
            print("(conversation forgotten)")
        elif line.startswith("/"):
            print(f"unknown command {line}: {HELP}")
        elif line:
            _answer(model, tokenizer, conversation, line, max_new_tokens, temperature, seed)


def _answer(model: CausalLM, tokenizer: Any, conversation: Conversation, line: str, max_new_tokens: int,
            temperature: float, seed: int) -> None:
    """Stream the answer after the model's prompt; Ctrl-C stops it, and the conversation stays as it was."""
    print(MODEL, end="", flush=True)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)  # prints, then a newline
    try:
        reply(model, tokenizer, conversation, line, max_new_tokens, temperature, seed, streamer)
    except KeyboardInterrupt:
        print(" [stopped]", flush=True)
