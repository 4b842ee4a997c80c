"""Conversations through a tokenizer's chat template: what the model reads before its next answer, and which tokens
of a rendered conversation are the assistant's.

The assistant's tokens are found by rendering the growing prefixes of the conversation and taking the ids each
assistant turn adds. This is exact for any template that renders the start of a conversation as the start of its
full rendering, whatever it puts around a turn (headers, end-of-turn tokens, a default system prompt); TRL's
assistant masks instead need `{% generation %}` markers, which few models' templates carry. A template that breaks
the prefix property (one that rewrites earlier turns, as some reasoning models' templates do) is refused by name,
and so is a conversation the template itself refuses (its `raise_exception`: Gemma's takes no system turn, Mistral's
and Llama 2's need user and assistant turns to alternate).
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from tunelab.errors import TunelabError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}
NO_TEMPLATE = ("the model's tokenizer has no chat template, and a conversation needs one to mark whose turn is whose: "
               "use an instruction-tuned model (e.g. smollm2), or prompt and completion columns")


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool,
           where: str) -> list[int]:
    """The conversation's token ids as the template lays it out (the template adds any special tokens itself); a
    conversation the template refuses is an error at `where`, in the template's own words."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                             return_dict=True)["input_ids"]
    except TemplateError as error:
        raise TunelabError(f"{where}: the model's chat template refuses it: \"{error}\"; some templates take no "
                           f"system message, or need user and assistant turns to alternate") from None


def context_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                where: str = "the conversation") -> list[int]:
    """What the model reads before its next answer: the conversation and the template's generation prompt. A
    tokenizer without a template reads a single prompt as plain text and a newline; a longer conversation is an
    error there, since there is no format the model knows to lay the turns out in."""
    if tokenizer.chat_template:
        return render(tokenizer, messages, True, where)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return tokenizer(messages[0]["content"] + "\n", add_special_tokens=True)["input_ids"]
    raise TunelabError(NO_TEMPLATE)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                    where: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The whole conversation's ids and the [start, end) positions of each assistant turn in them: its answer
    and end-of-turn token, without the template's header before it or separator after the end of turn."""
    if not tokenizer.chat_template:
        raise TunelabError(f"{where}: {NO_TEMPLATE}")
    full = render(tokenizer, messages, False, where)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            start = _prefix_length(tokenizer, messages[:index], True, full, where)
            end = _prefix_length(tokenizer, messages[:index + 1], False, full, where)
            spans.append((start, _through_end_of_turn(full, start, end, tokenizer.eos_token_id)))
    return full, spans


def _prefix_length(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool,
                   full: list[int], where: str) -> int:
    ids = render(tokenizer, messages, generation_prompt, where)
    if full[:len(ids)] != ids:
        raise TunelabError(f"{where}: the model's chat template lays out the first {len(messages)} message(s) "
                           f"differently alone than at the start of the whole conversation, so the assistant's "
                           f"tokens cannot be told apart; give prompt and completion columns instead")
    return len(ids)


def _through_end_of_turn(ids: list[int], start: int, end: int, eos_id: int | None) -> int:
    """Where a turn's span ends: after its last end-of-sequence token when it has one (what generation stops at),
    so a separator the template writes after it is not learnt; else the whole turn as rendered."""
    turn = ids[start:end]
    if eos_id is None or eos_id not in turn:
        return end
    return start + len(turn) - turn[::-1].index(eos_id)
