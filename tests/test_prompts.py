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
