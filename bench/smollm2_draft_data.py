"""Training data for the SmolLM2-135M-Instruct draft, written by the target itself (issue 18).

    OPENBLAS_NUM_THREADS=1 nice -n 10 python bench/smollm2_draft_data.py --target DIR --out DIR [--units N]

No evaluation prompt is used: every user turn is made here, from self-made topic and task lists, and
most of them are written by the target (it is asked, through its chat template, to write a question,
a request or a paragraph about a topic; the paragraph then becomes the text of a summarise / extract /
read-and-answer request). A share of the requests is about Python code cut from the bundled corpus'
train split (specdec.data.corpus). The target then answers each user turn through its chat template,
greedily for half the rows and at temperature 1 for the others, and its top-K log-probabilities (at
temperature 1, plus the tail bucket) are kept at every answer token: the teacher side of the loss,
without a second target forward.

Held out on purpose (no request of these kinds is made here): translation, role-play, and math
(arithmetic, word problems). Spec-Bench's translation, roleplay, math and math_reasoning categories are
then categories that no draft trained on this data saw.

Work is split into units of --batch user turns; unit i is a pure function of (--seed, i), is written
atomically as `unit_NNNNN.pt` (specdec.distill.samples' shard format) and is skipped when it is already
there, so the job can be killed at any time (kill -9 included) and restarted with the same command.
A folder holds one recipe: its settings.json is checked on every start, and only --units,
--first-unit and --threads may differ (anything else is refused in one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec.data.corpus import read_source, split_files  # noqa: E402
from specdec.common.config import differences  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.distill.samples import Generation, generate, write_shard  # noqa: E402
from specdec.engine.quant import QUANTIZE  # noqa: E402
from specdec.models import load_model, load_tokenizer  # noqa: E402

TOPICS = [
    "black holes", "photosynthesis", "the French Revolution", "volcanoes", "machine learning", "honey bees",
    "the Roman Empire", "climate change", "coffee", "the human heart", "electric cars", "jazz music",
    "the Great Wall of China", "vaccines", "recycling", "the Moon landing", "sleep", "dinosaurs",
    "the stock market", "renewable energy", "the Renaissance", "ocean currents", "the internet",
    "meditation", "earthquakes", "the printing press", "rainforests", "blockchain", "the immune system",
    "chess", "ancient Egypt", "social media", "bread baking", "the water cycle", "Shakespeare",
    "quantum computers", "urban gardening", "the Industrial Revolution", "glaciers", "public libraries",
    "marathon running", "the Cold War", "bird migration", "inflation", "solar panels", "the Silk Road",
    "memory and the brain", "coral reefs", "smartphones", "the Olympic Games", "democracy", "tea",
    "DNA", "wind turbines", "impressionist painting", "time management", "the Amazon river", "robots",
    "nutrition", "the Vikings", "cloud computing", "deserts", "friendship", "video games", "antibiotics",
    "the solar system", "architecture", "job interviews", "the Mediterranean diet", "cybersecurity",
    "mountain climbing", "the history of writing", "pollination", "personal finance", "3D printing",
    "ancient Greece", "plastic pollution", "yoga", "the telescope", "public speaking", "wolves",
    "the Cambrian explosion", "photography", "supply chains", "the Byzantine Empire", "hurricanes",
    "open source software", "classical music", "volunteering", "bacteria", "the metric system",
    "electric guitars", "the Ice Age", "mushrooms", "remote work", "trains", "the Aztecs", "gardening",
    "artificial intelligence ethics", "the periodic table", "board games", "coffee shops", "airplanes",
    "the history of medicine", "tornadoes", "a healthy morning routine", "minimalism", "penguins",
    "the Mongol Empire", "podcasts", "wildfires", "cheese making", "the theory of evolution",
    "learning a musical instrument", "lighthouses", "batteries", "the Great Barrier Reef", "startups",
    "the human skeleton", "city planning", "camping", "magnetism", "folk tales", "the postal service",
]

REQUESTS = [
    "Write a short story about {t}.", "Write a poem about {t}.", "Write a blog post about {t}.",
    "Write an email to a friend about {t}.", "Give me practical tips about {t}.",
    "Write a product description for something related to {t}.", "Explain {t} step by step.",
    "Write a persuasive paragraph about {t}.", "List the pros and cons of {t}.",
    "Create an outline for an essay about {t}.", "Write a short speech about {t}.",
    "Write a news article about {t}.", "Give advice to a beginner interested in {t}.",
    "Write a review of a book about {t}.", "Write a FAQ about {t}.", "Write a haiku about {t}.",
    "Write a catchy slogan and a short ad about {t}.", "Write a letter to a teacher about {t}.",
]

DIRECT = [
    "Explain {t} in simple terms.", "What are the most important facts about {t}?",
    "Why is {t} important?", "Give me five interesting facts about {t}.", "How does {t} work?",
    "What are common misconceptions about {t}?", "Write a short introduction to {t} for a student.",
    "What is the history of {t}?", "Describe {t} to someone who has never heard of it.",
]

CODE_TASKS = [
    "reverses a string", "checks whether a word is a palindrome", "counts the vowels in a text",
    "removes duplicates from a list while keeping the order", "merges two sorted lists",
    "finds the longest word in a sentence", "reads a CSV file and prints each row", "flattens a nested list",
    "returns the most common element of a list", "validates an email address with a regular expression",
    "groups a list of words by their first letter", "converts a dictionary to a JSON file",
    "splits a list into chunks of a given size", "capitalizes every word in a sentence",
    "counts word frequencies in a text file", "checks whether two strings are anagrams",
    "implements a simple stack class", "implements a queue with two stacks", "sorts a list of dictionaries by a key",
    "finds all files with a given extension in a folder", "implements binary search",
    "parses a date string and prints the weekday", "implements a linked list", "measures how long a function takes",
    "retries a function call when it raises an exception", "implements a least-recently-used cache",
    "downloads a web page and counts its links", "renames all files in a folder", "implements bubble sort",
    "zips two lists into a dictionary", "computes a running average of a stream of values",
]

# Stage one asks the target for a user turn. A question or puzzle is the continuation of a numbered list
# (raw text, no chat template: the 135M model writes far better user turns that way than when asked to
# write one in a chat); a paragraph is asked for in a chat.
META = {
    "question": "Here are questions that users asked an AI assistant about {t}:\n1.",
    "puzzle": "Here are short logic puzzles and reasoning questions about {t}:\n1.",
    "paragraph": "Write a short informative paragraph about {t}.",
}

WRAP = {
    "summarize": ["Summarize the following text in two sentences:\n\n{p}", "Summarize: {p}",
                  "Give a one-sentence summary of this text.\n{p}"],
    "extract": ["Extract the key facts from the following text as a bulleted list:\n\n{p}",
                "List every name, place and number mentioned in this text:\n{p}",
                "Read this text and give its main topic and three keywords as JSON.\n{p}"],
    "context_qa": ["{p}\n\nBased on the text above, what is the main point?",
                   "Read the text and answer the question.\nText: {p}\nQuestion: What does the text say about {t}?",
                   "Use the passage to answer: why does {t} matter?\n\nPassage: {p}"],
}

# kind -> share of the user turns of a unit
MIX = {"question": 0.22, "request": 0.16, "direct": 0.1, "summarize": 0.1, "extract": 0.08, "context_qa": 0.1,
       "code_task": 0.1, "code_explain": 0.07, "puzzle": 0.05}


def chat(tok, text: str) -> list:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                   add_generation_prompt=True, return_dict=False)


def clean_line(text: str) -> str:
    """A stage-one list item: its first line, without quotes."""
    return text.strip().split("\n")[0].strip().strip('"').strip()


def clean_paragraph(text: str) -> str:
    """A paragraph cut after its last full sentence (stage one stops at a token budget)."""
    text = text.strip()
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind(".") if text.endswith(".") else -1)
    return text[:cut + 1] if cut > 40 else text


def code_snippet(rng: random.Random, files: list) -> str:
    for _ in range(50):
        src = read_source(files[rng.randrange(len(files))])
        lines = src.splitlines()
        if len(lines) < 40:
            continue
        a = rng.randrange(len(lines) - 20)
        while a < len(lines) and not lines[a].lstrip().startswith(("def ", "class ")):
            a += 1
        snippet = "\n".join(lines[a:a + rng.randint(8, 18)]).rstrip()
        if 120 <= len(snippet) <= 900:
            return snippet
    return "def add(a, b):\n    return a + b"


def plan_unit(rng: random.Random, n: int) -> list[dict]:
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    return [{"kind": k, "topic": rng.choice(TOPICS)} for k in kinds]


def stage_one(plan, tok, model, args, seed) -> None:
    """Fill plan[i]["user"] (the user turn), asking the target where the kind needs it."""
    rng = random.Random(seed)
    files = split_files()[0]
    ask, idx = [], []
    for i, p in enumerate(plan):
        k, t = p["kind"], p["topic"]
        if k in ("question", "puzzle"):
            ask.append(tok(META[k].format(t=t)).input_ids)
            idx.append(i)
        elif k in WRAP:
            ask.append(chat(tok, META["paragraph"].format(t=t)))
            idx.append(i)
        elif k == "request":
            p["user"] = rng.choice(REQUESTS).format(t=t)
        elif k == "direct":
            p["user"] = rng.choice(DIRECT).format(t=t)
        elif k == "code_task":
            p["user"] = f"Write a Python function that {rng.choice(CODE_TASKS)}."
        elif k == "code_explain":
            p["user"] = "Explain what this Python code does:\n\n```python\n" + code_snippet(rng, files) + "\n```"
    if ask:
        # a list item ends at its line end, a paragraph at the end of the turn: two calls, each stopping early
        newline = tok("\n", add_special_tokens=False).input_ids
        for raw in (True, False):
            sel = [j for j, i in enumerate(idx) if (plan[i]["kind"] in META) == raw]
            if not sel:
                continue
            out = generate(model, [ask[j] for j in sel], args.stage1_tokens // (3 if raw else 1),
                           [args.stage1_temperature] * len(sel), seed + raw,
                           stop_ids=[tok.eos_token_id] + (newline if raw else []), topk=0, impl=args.impl)
            for j, ids in zip(sel, out.tokens):
                text = tok.decode(ids, skip_special_tokens=True)
                p = plan[idx[j]]
                if p["kind"] in WRAP:
                    p["user"] = rng.choice(WRAP[p["kind"]]).format(p=clean_paragraph(text), t=p["topic"])
                else:
                    p["user"] = clean_line(text)
    for p in plan:  # a stage-one answer too short to be a request falls back to a direct one
        if len(p.get("user", "")) < 12:
            p["user"] = rng.choice(DIRECT).format(t=p["topic"])


def answer(model, prompts: list, temps: list, seed: int, tok, args) -> Generation:
    """The target's answers, in --buckets batches of similar prompt length: a batch's prefill runs over
    its longest prompt, and a unit's prompts range from ~40 to ~380 tokens (measured on unit 0: 7,923
    prompt tokens in 96 rows, padded to the longest)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = -(-len(order) // args.buckets)
    parts = {}
    for b in range(0, len(order), size):
        rows = order[b:b + size]
        gen = generate(model, [prompts[i] for i in rows], args.new_tokens, [temps[i] for i in rows], seed + b,
                       stop_ids=[tok.eos_token_id], topk=args.topk, impl=args.impl)
        for j, i in enumerate(rows):
            parts[i] = (gen.tokens[j], gen.topk_idx[j], gen.topk_logp[j], gen.tail_logp[j])
    return Generation(*[[parts[i][f] for i in range(len(prompts))] for f in range(4)])


def run_unit(unit: int, tok, model, args) -> dict:
    seed = args.seed * 1_000_003 + unit
    rng = random.Random(seed)
    plan = plan_unit(rng, args.batch)
    t0 = time.time()
    stage_one(plan, tok, model, args, seed)
    t1 = time.time()
    prompts = [chat(tok, p["user"])[-args.max_prompt_tokens:] for p in plan]
    temps = [0.0 if i % 2 == 0 else 1.0 for i in range(len(plan))]
    out = answer(model, prompts, temps, seed + 7, tok, args)
    t2 = time.time()
    meta = [{"kind": p["kind"], "topic": p["topic"], "user": p["user"], "temperature": t}
            for p, t in zip(plan, temps)]
    write_shard(Path(args.out) / f"unit_{unit:05d}.pt", prompts, out, meta)
    n = sum(len(t) for t in out.tokens)
    return {"unit": unit, "answer_tokens": n, "stage1_s": round(t1 - t0, 1), "stage2_s": round(t2 - t1, 1),
            "prompt_tokens": sum(len(p) for p in prompts), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# What may change when a folder's job is restarted: how much of it runs, and on how many threads.
RESUMABLE = ("units", "first_unit", "threads")


def settings_problem(path: Path, settings: dict, defaults: dict) -> str | None:
    """Why `settings` may not add units to the folder whose settings.json is `path` (None: they may): a
    folder holds units of one recipe, so a unit's content is a function of its number alone. A setting
    the folder's file lacks (written before that option existed) was its default."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text(encoding="utf-8"))
    old = {**{k: v for k, v in defaults.items() if k not in old and k in settings}, **old}
    diff = differences(old, settings, ignore=RESUMABLE + ("out",))
    if not diff:
        return None
    return f"{path.parent} holds units written with other settings ({'; '.join(diff)}): write to another --out"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="SmolLM2-135M-Instruct: a transformers folder or its .gguf file")
    ap.add_argument("--out", required=True, help="folder of the units (created; reused to resume)")
    ap.add_argument("--units", type=int, default=60)
    ap.add_argument("--first-unit", type=int, default=0)
    ap.add_argument("--batch", type=int, default=96, help="user turns per unit (one decode batch)")
    ap.add_argument("--new-tokens", type=int, default=160, help="answer tokens at most")
    ap.add_argument("--stage1-tokens", type=int, default=96)
    ap.add_argument("--stage1-temperature", type=float, default=0.8)
    ap.add_argument("--max-prompt-tokens", type=int, default=384)
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--buckets", type=int, default=2, help="answer batches per unit, by prompt length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impl", default="numpy", help="the ModelRunner forward (numpy: fastest here at batch 64)")
    ap.add_argument("--quantize", default="none", choices=QUANTIZE,
                    help="how the target runs while it writes (specdec's --quantize; gguf* need --target FILE.gguf). "
                         "none: the float32 model itself. gguf-q8a decodes ~2x faster at batch 48 here, and its "
                         "samples are that model's (its Q8 activations round differently), not the float32 one's")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = settings_problem(out / "settings.json", vars(args), {a.dest: a.default for a in ap._actions})
    if problem:
        print(f"smollm2_draft_data: error: {problem}", file=sys.stderr)
        return 2
    write_json_atomic(out / "settings.json", vars(args), indent=1)
    tok = load_tokenizer(args.target)
    model = load_model(args.target, quantize=args.quantize)
    with torch.no_grad():
        for unit in range(args.first_unit, args.first_unit + args.units):
            if (out / f"unit_{unit:05d}.pt").exists():
                continue
            row = run_unit(unit, tok, model, args)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
