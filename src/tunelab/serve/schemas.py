"""The request and response bodies, as the OpenAPI schema publishes them. Completions and chat follow OpenAI's
API (the fields tunelab honours; an unknown field is ignored there, as OpenAI's own servers do); predict and score
are tunelab's own."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_LOGPROBS = 20  # as OpenAI's API allows


class Error(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: Error


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    root: str
    parent: str | None
    task: str
    strategy: str | None
    hidden_size: int | None = Field(None, description="a language model's hidden size: the width of a soft prompt")
    embedding_std: float | None = Field(None, description="the standard deviation of a language model's token "
                                                          "embeddings: the scale of a soft prompt")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class Health(BaseModel):
    status: str
    models: int


# --- predict ----------------------------------------------------------------------------------------------------

class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a served model's name (GET /v1/models)")
    inputs: list[str] | str = Field(description="texts; for a question-answering model, questions about `context`")
    context: str | None = Field(None, description="question answering: the passage the questions are about")


class Classified(BaseModel):
    text: str
    label: str
    probabilities: dict[str, float]


class Valued(BaseModel):
    text: str
    value: float


class Entity(BaseModel):
    text: str
    type: str
    start: int
    end: int
    score: float


class Tagged(BaseModel):
    text: str
    entities: list[Entity]


class Answered(BaseModel):
    question: str
    answer: str = Field(description="'' when the passage holds no answer")
    start: int | None
    end: int | None
    score: float
    probability: float


class PredictResponse(BaseModel):
    object: Literal["prediction"] = "prediction"
    model: str
    task: str
    data: list[Classified | Valued | Tagged | Answered]


# --- score --------------------------------------------------------------------------------------------------------

class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    prompts: list[str] | list[list[str]] | str = Field(
        description="each prompt is scored with each continuation; with soft_lengths, each prompt is pieces of text "
                    "with the soft prompt's blocks between them")
    continuations: list[str] = Field(min_length=1)
    soft_prompt: list[list[float]] | None = Field(
        None, description="input embeddings (virtual tokens x the model's hidden size) put before every prompt, or "
                          "with soft_lengths between its pieces")
    soft_lengths: list[int] | None = Field(
        None, description="the soft prompt's rows cut into blocks of these lengths, one between each two pieces of "
                          "every prompt")
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)


class TokenEmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    text: str = Field(min_length=1, description="the text whose tokens' input embeddings are wanted")


class TokenEmbeddings(BaseModel):
    object: Literal["token_embeddings"] = "token_embeddings"
    model: str
    tokens: list[str] = Field(description="the text's tokens, as the model reads it (no special tokens)")
    data: list[list[float]] = Field(description="each token's input embedding: where a soft prompt can start")
    usage: Usage


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[dict[str, str | float]] = Field(default_factory=list)


class Scored(BaseModel):
    continuation: str
    logprob: float = Field(description="the continuation's log-probability after its prompt, summed over tokens")
    tokens: list[TokenLogprob]


class ScoreResponse(BaseModel):
    object: Literal["score"] = "score"
    model: str
    data: list[list[Scored]] = Field(description="[prompt][continuation]")
    usage: Usage


# --- completions and chat (OpenAI) ------------------------------------------------------------------------------

class Sampled(BaseModel):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")


class CompletionRequest(Sampled):
    prompt: str | list[str] = Field(description="plain text the model continues (no chat template)")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS - 1)
    echo: bool = False


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_completion_tokens: int | None = Field(None, ge=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# --- adapters at run time ---------------------------------------------------------------------------------------

class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a run directory or a bundle on the server's disk")
    name: str | None = Field(None, description="the name to serve it under [default: its folder's name]")


class Loaded(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


ScoreResponse.model_rebuild()
