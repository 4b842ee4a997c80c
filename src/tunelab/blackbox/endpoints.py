"""What a black-box method may ask of a model it can only query, and the meter on every question.

Three operations: the log-probability of each continuation (the label words) after each prompt, optionally with a
soft prompt (input embeddings) before it or in blocks between its pieces of text; text generated after a prompt (the
prompt search's proposals); and the input embeddings of a text's tokens (where a soft prompt starts from). Three
endpoints answer them: the model in this process, a `tunelab serve` server (`/v1/score`, soft prompts included, and
`/v1/token_embeddings`) and any OpenAI-compatible server (`/v1/completions` with `echo` and `logprobs`: no soft
prompts); both servers generate through `/v1/completions`. A method states what it needs and an endpoint that lacks
it is refused before any call.

Every request is a call: counted with its tokens and wall time, refused before it is made once the call (or token)
budget would be passed, answered from a cache when the same question was asked before (not counted again), and
retried with backoff on transient HTTP failures (each retry counted).
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.runs import write_json
from tunelab.tasks.generation import complete
from tunelab.tasks.likelihood import score_texts, token_embeddings

RETRIES = 4
BACKOFF_S = 0.5  # the first retry's wait; each next one waits twice as long
TRANSIENT = {429, 500, 502, 503, 504}
SCORINGS = ("echo", "top")
TOP_LOGPROBS = 20  # OpenAI's most

# A prompt is a text, or pieces of text with the soft prompt's blocks between them; a soft prompt is rows of input
# embeddings (virtual tokens x hidden size) before each text, or a list of such blocks, one fewer than the pieces.
Prompt: TypeAlias = str | tuple[str, ...]
SoftPrompt: TypeAlias = np.ndarray | list[np.ndarray]


class BudgetSpent(TunelabError):
    """The next call would pass the budget."""


@dataclass
class Usage:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    wall_s: float = 0.0
    retries: int = 0
    cached: int = 0  # questions answered from the cache, not counted as calls


@dataclass(frozen=True)
class Budget:
    calls: int | None = None
    tokens: int | None = None


class Endpoint(ABC):
    soft_prompts: bool = False  # takes input embeddings with the prompts, and gives its tokens' embeddings
    hidden_size: int | None = None  # the width of those embeddings, where known
    embedding_std: float | None = None  # the standard deviation of its token embeddings: a soft prompt's scale

    def __init__(self, budget: Budget = Budget()):
        self.budget, self.usage = budget, Usage()
        self.cache: dict[str, np.ndarray] = {}
        self.ledger: Path | None = None  # where the usage is written after every call, so none goes uncounted

    def keep_ledger(self, path: Path) -> None:
        """Count into `path`, starting from what it holds (a search resumed after a kill)."""
        if path.exists():
            self.usage = Usage(**json.loads(path.read_text(encoding="utf-8")))
        self.ledger = path

    def describe(self) -> str:
        return type(self).__name__

    def remaining_calls(self) -> int | None:
        return None if self.budget.calls is None else self.budget.calls - self.usage.calls

    def score(self, prompts: list[Prompt], continuations: list[str],
              soft_prompt: SoftPrompt | None = None) -> np.ndarray:
        """(prompts, continuations) log-probabilities, each continuation summed over its tokens."""
        if soft_prompt is not None and not self.soft_prompts:
            raise TunelabError(f"{self.describe()} takes no soft prompt")
        rows, lengths = soft_prompt, None
        if isinstance(soft_prompt, list):
            rows, lengths = np.concatenate(soft_prompt), tuple(len(block) for block in soft_prompt)
        return self._metered(_key("score", prompts, continuations, lengths, soft_prompt=rows),
                             lambda: self._score(prompts, continuations, rows, lengths))

    def token_embeddings(self, text: str) -> np.ndarray:
        """(tokens, hidden size): the input embeddings of `text`'s tokens, as the model reads them: one call."""
        if not self.soft_prompts:
            raise TunelabError(f"{self.describe()} does not give its token embeddings")
        return self._metered(_key("token_embeddings", text), lambda: self._token_embeddings(text))

    def generate(self, prompt: str, samples: int, max_tokens: int, temperature: float, seed: int) -> list[str]:
        """`samples` continuations of `prompt` (plain text, no chat template), sampled with `seed`: one call."""
        return self._metered(_key("generate", [prompt], [], samples, max_tokens, temperature, seed),
                             lambda: self._generate(prompt, samples, max_tokens, temperature, seed))

    def _metered(self, key: str, ask: Callable[[], tuple[Any, int, int]]) -> Any:
        """One question: from the cache (not counted), or asked within the budget and counted, with its tokens and
        time, into the ledger."""
        if key in self.cache:
            self.usage.cached += 1
            return self.cache[key]
        if self.budget.calls is not None and self.usage.calls + 1 > self.budget.calls:
            raise BudgetSpent(f"the budget of {self.budget.calls} calls is spent")
        if self.budget.tokens is not None and self.usage.tokens_in >= self.budget.tokens:
            raise BudgetSpent(f"the budget of {self.budget.tokens} tokens is spent")
        started = time.perf_counter()
        answer, tokens_in, tokens_out = ask()
        self.usage.calls += 1
        self.usage.tokens_in += tokens_in
        self.usage.tokens_out += tokens_out
        self.usage.wall_s += time.perf_counter() - started
        if self.ledger is not None:
            write_json(self.ledger, asdict(self.usage))
        self.cache[key] = answer
        return answer

    @abstractmethod
    def _score(self, prompts: list[Prompt], continuations: list[str], soft_prompt: np.ndarray | None,
               soft_lengths: tuple[int, ...] | None) -> tuple[np.ndarray, int, int]:
        """(scores, tokens sent, tokens received) of one call; `soft_lengths`: the rows of each block between a
        prompt's pieces (None: the soft prompt goes before each prompt, a text)."""

    def _token_embeddings(self, text: str) -> tuple[np.ndarray, int, int]:
        """(embeddings, tokens sent, tokens received) of one call."""
        raise NotImplementedError  # only endpoints that take soft prompts answer it

    @abstractmethod
    def _generate(self, prompt: str, samples: int, max_tokens: int, temperature: float,
                  seed: int) -> tuple[list[str], int, int]:
        """(texts, tokens sent, tokens received) of one call."""


def _key(*question: Any, soft_prompt: np.ndarray | None = None) -> str:
    digest = hashlib.sha256(json.dumps(question).encode())
    if soft_prompt is not None:
        digest.update(np.ascontiguousarray(soft_prompt, dtype=np.float32).tobytes())
    return digest.hexdigest()


class InProcess(Endpoint):
    """A causal LM in this process: the reference every HTTP endpoint is compared with."""

    soft_prompts = True

    def __init__(self, model, tokenizer, budget: Budget = Budget()):
        super().__init__(budget)
        self.model, self.tokenizer = model, tokenizer
        self.hidden_size = model.backbone.get_input_embeddings().weight.shape[1]
        self.embedding_std = model.embedding_std

    def describe(self) -> str:
        return "the model in this process"

    def _score(self, prompts, continuations, soft_prompt, soft_lengths):
        soft = None if soft_prompt is None else torch.as_tensor(soft_prompt, dtype=torch.float32)
        rows = score_texts(self.model, self.tokenizer, prompts, continuations, soft, soft_lengths=soft_lengths)
        return (np.array([[scored.total for scored in row] for row in rows]),
                sum(scored.read for row in rows for scored in row), 0)

    def _token_embeddings(self, text):
        ids, rows = token_embeddings(self.model, self.tokenizer, text)
        return rows.numpy(), len(ids), 0

    def _generate(self, prompt, samples, max_tokens, temperature, seed):
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        texts = complete(self.model, self.tokenizer, [ids] * samples, max_tokens, temperature, seed)
        return texts, len(ids), sum(len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                                    for text in texts)


class _Http(Endpoint):
    def __init__(self, url: str, model: str, api_key: str | None, budget: Budget = Budget(),
                 client: httpx.Client | None = None):
        """`client`: an httpx client of one's own (a test's, a proxy's); by default a plain one."""
        super().__init__(budget)
        self.url, self.model = url.rstrip("/"), model
        self.client = client or httpx.Client(timeout=120)
        if api_key:
            self.client.headers["Authorization"] = f"Bearer {api_key}"

    def describe(self) -> str:
        return f"{self.url} (model {self.model})"

    def post(self, path: str, body: dict) -> dict:
        """The JSON answer, after retrying transient failures with exponential backoff (each retry counted)."""
        for attempt in range(RETRIES + 1):
            try:
                response = self.client.post(f"{self.url}{path}", json=body)
            except httpx.TransportError as failure:
                problem = f"{type(failure).__name__}: {failure}"
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in TRANSIENT:
                    raise TunelabError(f"{self.url}{path} answered {response.status_code}: {response.text[:300]}")
                problem = f"status {response.status_code}"
            if attempt == RETRIES:
                raise TunelabError(f"{self.url}{path} failed {RETRIES + 1} times, last with {problem}")
            self.usage.retries += 1
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _generate(self, prompt, samples, max_tokens, temperature, seed):
        """`/v1/completions` once per sample, each with its own seed: every OpenAI-compatible server takes one prompt
        and a seed, where not every one takes `n` or a list of prompts."""
        texts, tokens_in, tokens_out = [], 0, 0
        for sample in range(samples):
            answer = self.post("/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                                   "temperature": temperature, "seed": seed + sample})
            texts.append(answer["choices"][0]["text"])
            usage = answer.get("usage") or {}
            tokens_in, tokens_out = tokens_in + usage.get("prompt_tokens", 0), \
                tokens_out + usage.get("completion_tokens", 0)
        return texts, tokens_in, tokens_out


class TunelabServer(_Http):
    """`tunelab serve`'s `/v1/score`: label words scored in one request per call, soft prompts included."""

    soft_prompts = True

    def __init__(self, url: str, model: str, api_key: str | None, budget: Budget = Budget(),
                 client: httpx.Client | None = None):
        super().__init__(url, model, api_key, budget, client)
        listed = self.client.get(f"{self.url}/v1/models/{model}")
        if listed.status_code != 200:
            raise TunelabError(f"{self.url} does not serve '{model}': {listed.text[:200]}")
        self.hidden_size, self.embedding_std = listed.json().get("hidden_size"), listed.json().get("embedding_std")

    def _score(self, prompts, continuations, soft_prompt, soft_lengths):
        body = {"model": self.model, "prompts": [list(prompt) if isinstance(prompt, tuple) else prompt
                                                 for prompt in prompts], "continuations": continuations}
        if soft_prompt is not None:
            body["soft_prompt"] = np.asarray(soft_prompt, dtype=np.float32).tolist()
        if soft_lengths is not None:
            body["soft_lengths"] = list(soft_lengths)
        answer = self.post("/v1/score", body)
        scores = np.array([[item["logprob"] for item in row] for row in answer["data"]])
        return scores, answer["usage"]["prompt_tokens"], 0

    def _token_embeddings(self, text):
        answer = self.post("/v1/token_embeddings", {"model": self.model, "text": text})
        return np.array(answer["data"], dtype=np.float32), answer["usage"]["prompt_tokens"], 0


class OpenAICompatible(_Http):
    """Any OpenAI-compatible server, `/v1/completions`, one of two ways (`scoring`). `echo` (the exact way): each
    prompt + continuation sent with `echo` and `logprobs`, all in one request per call, the continuation's tokens read
    from the echoed log-probabilities by their character offsets. `top`, for servers whose echoed log-probabilities
    cannot be used or that take one prompt per request (llama-cpp-python's server: it pairs each echoed token with
    the next position's distribution when the model adds no BOS token): each prompt alone, one generated token with
    its top log-probabilities, a continuation scored by its first token (the entry it starts with; absent from the
    top, the lowest listed: an upper bound). No soft prompts."""

    def __init__(self, url: str, model: str, api_key: str | None, budget: Budget = Budget(),
                 client: httpx.Client | None = None, scoring: str = "echo"):
        super().__init__(url, model, api_key, budget, client)
        if scoring not in SCORINGS:
            raise TunelabError(f"unknown scoring '{scoring}'; choose {', '.join(SCORINGS)}")
        self.scoring = scoring

    def _score(self, prompts, continuations, soft_prompt, soft_lengths):
        return (self._echoed if self.scoring == "echo" else self._top)(prompts, continuations)

    def _echoed(self, prompts: list[str], continuations: list[str]) -> tuple[np.ndarray, int, int]:
        texts = [prompt + ending for prompt in prompts for ending in continuations]
        answer = self.post("/v1/completions", {"model": self.model, "prompt": texts, "max_tokens": 1, "echo": True,
                                               "logprobs": 1, "temperature": 0})
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        scores = []
        for text, choice, (prompt, _) in zip(texts, choices, [(p, c) for p in prompts for c in continuations],
                                             strict=True):
            logprobs = choice["logprobs"]
            offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
            scores.append(sum(value for offset, value in zip(offsets, values, strict=True)
                              if len(prompt) <= offset < len(text) and value is not None))
        usage = answer.get("usage") or {}
        return (np.array(scores).reshape(len(prompts), len(continuations)), usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0))

    def _top(self, prompts: list[str], continuations: list[str]) -> tuple[np.ndarray, int, int]:
        scores, tokens_in, tokens_out = np.empty((len(prompts), len(continuations))), 0, 0
        for row, prompt in enumerate(prompts):
            answer = self.post("/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1,
                                                   "logprobs": TOP_LOGPROBS, "temperature": 0})
            top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
            scores[row] = [first_token_logprob(top, ending) for ending in continuations]
            usage = answer.get("usage") or {}
            tokens_in, tokens_out = tokens_in + usage.get("prompt_tokens", 0), \
                tokens_out + usage.get("completion_tokens", 0)
        return scores, tokens_in, tokens_out


def first_token_logprob(top: dict[str, float], continuation: str) -> float:
    """A continuation's log-probability read from the next token's top entries: the longest entry it starts with;
    none, the lowest listed (the continuation is at most that likely)."""
    matches = [token for token in top if token.strip() and continuation.startswith(token)]
    return top[max(matches, key=len)] if matches else min(top.values())
