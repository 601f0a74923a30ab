"""Prompt loaders: user JSONL, Spec-Bench's question.jsonl, the built-in sets, and their errors."""
import json
import random
from pathlib import Path

import pytest

from specdec.data.prompts import builtin, categories, limit_per_category, load_prompts, load_prompts_file

DATA = Path(__file__).parent / "data"
WORDS = "a b c d e f g h one two three four sea poem email friend write short about the to an if what is".split()


def tiny_tokenizer(chat_template: str | None = None):
    """A 64-token word-level tokenizer (pad 0, bos 1, eos 2, unk 3) wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in WORDS + [f"w{i}" for i in range(64)]:
        if len(vocab) == 64:
            break
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def test_user_jsonl_grouped_by_category_and_default_category():
    prompts = load_prompts_file(DATA / "prompts.jsonl")
    assert [p["category"] for p in prompts] == ["letters", "letters", "numbers", "default"]
    assert [p["prompt"] for p in prompts] == ["a b c d e", "f g h", "one two three", "no category here"]
    assert categories(prompts) == ["letters", "numbers", "default"]
    assert [p["category"] for p in limit_per_category(prompts, 1)] == ["letters", "numbers", "default"]


def test_spec_bench_first_turn_raw_without_chat_template():
    prompts = load_prompts_file(DATA / "spec_bench_question.jsonl", tokenizer=tiny_tokenizer())
    assert [p["id"] for p in prompts] == ["81", "82", "101"]
    assert [p["category"] for p in prompts] == ["writing", "writing", "reasoning"]
    assert prompts[0]["prompt"] == "Write a short poem about the sea."


def test_spec_bench_through_chat_template():
    tmpl = "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos>{% endfor %}" \
           "{% if add_generation_prompt %} assistant :{% endif %}"
    prompts = load_prompts_file(DATA / "spec_bench_question.jsonl", tokenizer=tiny_tokenizer(tmpl))
    assert prompts[0]["prompt"] == "<bos> user : Write a short poem about the sea. <eos> assistant :"


def test_builtin_sets():
    prompts, source = load_prompts(None, num_per_category=1)
    assert "builtin" in source
    assert len(prompts) == len(categories(prompts)) >= 2
    assert all(set(p) == {"id", "category", "prompt"} and p["prompt"] for p in prompts)
    assert builtin(1) == prompts


@pytest.mark.parametrize("lines, match", [
    ([], "empty"),
    (["", "   "], "empty"),
    (['{"prompt": "ok"}', '{"prompt": "ok"', '{"prompt": "x"}'], "line 2"),
    (['{"prompt": "ok"}', '{"text": "no prompt"}'], ":2: no 'prompt'"),
    (['["a list"]'], ":1: expected a JSON object"),
    (['{"turns": []}'], "non-empty list"),
])
def test_bad_files(tmp_path, lines, match):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(ValueError, match=match):
        load_prompts_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts_file(tmp_path / "nope.jsonl")


def test_completion_is_kept_when_given_and_checked(tmp_path):
    """One record for bench and distill: `completion` (the fixed continuation distillation's dataset
    source trains on) is kept when a line has it, and nowhere else."""
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a b", "completion": "c d"}) + "\n" + json.dumps({"prompt": "e"}) + "\n"
                    + json.dumps({"prompt": "f", "completion": None}) + "\n")
    prompts = load_prompts_file(path)
    assert prompts[0]["completion"] == "c d"
    assert "completion" not in prompts[1] and "completion" not in prompts[2]
    assert load_prompts(path)[0] == prompts
    path.write_text(json.dumps({"prompt": "a", "completion": 3}) + "\n")
    with pytest.raises(ValueError, match=":1: 'completion' must be a non-empty string"):
        load_prompts_file(path)


def test_distillation_reads_prompts_through_the_same_loader(tmp_path):
    """Spec-Bench questions and user JSONL feed distillation too; a prompt-only file cannot feed the
    sources that train on the data's own continuations."""
    from specdec.distill.data import PromptSet
    tok = tiny_tokenizer()
    ps = PromptSet(tok, prompt_tokens=4, new_tokens=2, jsonl=DATA / "spec_bench_question.jsonl")
    assert [r["id"] for r in ps.records] == ["81", "82", "101"]
    ps.check_source("student")
    ps.check_source("mix", lmbda=1.0)  # the draft samples every batch: no continuation is read
    with pytest.raises(ValueError, match='without "completion"'):
        ps.check_source("dataset")
    with pytest.raises(ValueError, match='without "completion"'):
        ps.check_source("mix", lmbda=0.5)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a b c d e f", "completion": "one two three"}) + "\n")
    ps = PromptSet(tok, prompt_tokens=4, new_tokens=2, jsonl=path)
    ps.check_source("dataset")
    prompt, completion = ps.sample(random.Random(0))
    assert tok.decode(prompt) == "c d e f" and tok.decode(completion) == "one two"


CHATML = ("{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos>{% endfor %}"
          "{% if add_generation_prompt %} assistant :{% endif %}")


def test_builtin_chat_set():
    prompts, source = load_prompts("builtin:chat", num_per_category=1)
    assert "chat" in source and len(prompts) == len(categories(prompts)) == 11
    every, _ = load_prompts("builtin:chat")
    assert len(every) == 33 and len({p["id"] for p in every}) == 33 and all(p["prompt"] for p in every)
    assert load_prompts("builtin:code", num_per_category=1) == load_prompts(None, num_per_category=1)
    with pytest.raises(ValueError, match="unknown built-in prompt set 'builtin:poems'"):
        load_prompts("builtin:poems")


@pytest.mark.parametrize("source", ["builtin:chat", "builtin:code", DATA / "prompts.jsonl",
                                    DATA / "spec_bench_question.jsonl"])
def test_chat_template_modes_apply_to_every_source(source):
    """auto wraps when the tokenizer has a template, on always (and refuses a tokenizer without one),
    off never; one rule for the built-in sets, user JSONL and Spec-Bench alike."""
    tmpl, plain = tiny_tokenizer(CHATML), tiny_tokenizer()
    raw, _ = load_prompts(source, None, 1)
    for tok, mode, wrapped in ((tmpl, "auto", True), (tmpl, "on", True), (tmpl, "off", False),
                               (plain, "auto", False), (plain, "off", False)):
        got, _ = load_prompts(source, tok, 1, mode)
        expect = [f"<bos> user : {p['prompt']} <eos> assistant :" if wrapped else p["prompt"] for p in raw]
        assert [p["prompt"] for p in got] == expect, (mode, wrapped)
    with pytest.raises(ValueError, match="--chat-template on, but the tokenizer has no chat template"):
        load_prompts(source, plain, 1, "on")
    with pytest.raises(ValueError, match="--chat-template must be one of auto, on, off"):
        load_prompts(source, tmpl, 1, "yes")


def test_completion_is_never_wrapped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a b", "completion": "c d"}) + "\n")
    (p,) = load_prompts_file(path, tiny_tokenizer(CHATML))
    assert p == {"id": "1", "category": "default", "prompt": "<bos> user : a b <eos> assistant :", "completion": "c d"}


def test_spec_bench_loads_first_turns_of_every_category(tmp_path):
    """Spec-Bench's question.jsonl layout: 13 categories, some questions with one turn; every category is
    kept, each question's first turn only, in first-appearance order of the categories."""
    cats = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
            "translation", "summarization", "qa", "math_reasoning", "rag"]
    lines = [{"question_id": i, "category": c, "turns": [f"first {i}", f"second {i}"][:1 + i % 2]}
             for i, c in enumerate(cats * 2)]
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    prompts = load_prompts_file(path)
    assert categories(prompts) == cats and len(prompts) == 26
    assert all(p["prompt"] == f"first {p['id']}" for p in prompts)
