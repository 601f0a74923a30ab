"""The results of `specdec bench`: the row schema, the records the timing stage hands over, and the pure
summary from one to the other. Nothing here loads a model or reads a clock (no torch), so the summary
is tested on hand-made passes and `specdec plot` reads results without the engine.

Methods (the `method` field of each row):
  ar                     plain decoding of the target in the same run; the denominator of every speedup
  sd                     specdec's SpeculativeDecoder at each gamma; gamma "auto" chooses each round's
                         count from the costs and the acceptance so far (`gamma_counts` holds the choices)
  hf_assisted            transformers' `target.generate(assistant_model=draft)`, batch size 1, a constant
                         schedule of exactly gamma drafts (confidence early stop disabled)
  hf_generate            transformers' plain `target.generate()` (no assistant), every batch size: what
                         plain decoding of the same model costs through transformers (its speedup
                         below 1 is how much faster specdec's plain loop is)
  hf_assisted_default    the same with transformers' own assistant defaults (gamma = null; in 5.x a
                         confidence threshold of 0.4 on 20 drafts)
  hf_assisted_heuristic  the same with its heuristic schedule (start 5, +2 / -1; gamma = null)
  llamacpp               llama.cpp's plain decoding of the target's GGUF file (batch size 1, where
                         llama-cpp-python is installed; benchmark/llamacpp.py): its own quantized kernels,
                         so its greedy outputs need not equal the target's (outputs_match_ar stays null; how
                         far they agree: meta["llamacpp"]["greedy_agreement"])

Rows. A category gets its own row only where every batch holding its prompts holds nothing else (always
at batch size 1); the "all" row covers every prompt. tokens_per_s is the median over repeats of (new
tokens / wall seconds of the pass); `repeats` keeps every repeat's value and the spread. speedup =
tokens_per_s / that of "ar" at the same temperature, batch size and category. Acceptance statistics are
pooled over all timed repeats.

Cost model (specdec/costmodel/predict.py): predicted speedup = tau / (gamma * c + v) with
tau = (1 - alpha^(gamma+1)) / (1 - alpha) from the measured per-token acceptance `alpha` (the paper's alpha, not the vLLM-convention
`acceptance_rate` = accepted / drafted, which is also reported), c = draft 1-token step / target 1-token
step and v = target (gamma+1)-token step / target 1-token step. `predicted_speedup_tau` uses the measured
mean acceptance length as tau instead of the i.i.d. formula. For gamma auto the prediction averages the
model over the counts chosen: sum_k n_k tau(alpha, k) / sum_k n_k (k c + v(k)) (n_k = gamma_counts[k]).
"""
from __future__ import annotations

import dataclasses
import statistics
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..common.files import json_type, read_json
from ..common.values import is_greedy
from ..costmodel import AUTO
from ..costmodel.predict import predicted_speedup, predicted_speedup_mix
from ..engine.stats import DecodeStats

METHODS = ("ar", "sd", "hf_generate", "hf_assisted", "hf_assisted_default", "hf_assisted_heuristic", "llamacpp")


@dataclass
class BenchRow:
    """One row of results.json: one configuration (method, gamma, temperature, batch size) on one
    prompt category. A configuration that failed (an HF baseline this transformers cannot run) is a row
    with `error` set and no measurements."""
    method: str
    gamma: int | str | None                    # an integer, "auto", or None (ar and HF's own schedules)
    temperature: float
    batch_size: int
    category: str = "all"
    num_prompts: int | None = None
    new_tokens: int | None = None              # of the first repeat
    wall_s: float | None = None                # median over repeats
    tokens_per_s: float | None = None          # median over repeats
    speedup: float | None = None               # tokens_per_s / that of "ar" (same temperature, batch, category)
    decode_tokens_per_s: float | None = None   # the same without the prompts' prefill (ar and sd rows)
    decode_speedup: float | None = None        # decode_tokens_per_s / that of "ar"
    target_calls: int | None = None            # target forwards of the first repeat
    acceptance_rate: float | None = None       # accepted / drafted
    alpha: float | None = None                 # per-token acceptance (metrics.per_token_acceptance)
    draft_steps: int | None = None
    mean_accepted_length: float | None = None  # 1 + accepted / draft steps; HF: tokens per target forward
    per_position_acceptance: list | None = None
    mean_gamma: float | None = None            # drafts per draft step (sd)
    gamma_counts: list | None = None           # [k]: row-rounds that drafted k tokens, over every repeat (sd)
    draft_cost_ratio: float | None = None      # c
    verify_cost_ratio: float | None = None     # v at this gamma
    predicted_speedup: float | None = None
    predicted_speedup_tau: float | None = None
    outputs_match_ar: bool | None = None       # greedy only: every output equals plain decoding's
    repeated_share: float | None = None        # of new_tokens: inside verbatim self-repeats (repeated_share)
    repeats: dict | None = None                # {"tokens_per_s": spread, "wall_s": spread, "new_tokens": [...]}
    error: str | None = None

    @property
    def key(self) -> tuple:
        """What a speedup is relative to: the "ar" row with the same key."""
        return (self.temperature, self.batch_size, self.category)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "row") -> "BenchRow":
        """A row read back from results.json; keys it does not know are ignored (newer files)."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} is a {type(d).__name__}, not a JSON object")
        missing = [k for k in ("method", "temperature", "batch_size") if k not in d]
        if missing:
            raise ValueError(f"{where} has no {missing[0]!r}")
        hints = typing.get_type_hints(cls)
        kw = {"gamma": None, **{k: v for k, v in d.items() if k in hints}}
        for k, v in kw.items():   # a damaged or hand-edited file: named here, not as a TypeError in a plot
            if not _fits(v, hints[k]):
                raise ValueError(f"{where}: {k!r} is {json_type(v, article=True)} ({str(v)[:40]!r}), not what a "
                                 "bench row holds there; is it a specdec bench results.json?")
        return cls(**kw)


def _fits(value, hint) -> bool:
    """Is a JSON value of the row field type `hint` (float also takes an integer; a bool is no number)?"""
    for kind in typing.get_args(hint) or (hint,):
        if value is None and kind is type(None):
            return True
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (kind is float and number) or (kind is int and number and isinstance(value, int)):
            return True
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return True
    return False


# ----------------------------------------------------------------------------------------------------
# What the timing stage hands to the summary.

@dataclass(frozen=True)
class Setting:
    """One configuration of the sweep."""
    method: str
    gamma: int | str | None
    temperature: float
    batch_size: int


@dataclass
class TimedPass:
    """One timed pass of one configuration over every batch."""
    walls: list            # [batch] wall seconds
    stats: list            # [batch] DecodeStats (None for the HF baselines)
    calls: list            # [batch] target forwards
    outputs: list          # [prompt] generated ids


@dataclass
class Measured:
    """Every timed pass of one configuration, or the error that stopped it."""
    setting: Setting
    batches: list          # [batch] prompt indices
    passes: list = field(default_factory=list)   # [repeat] TimedPass
    error: str | None = None


# ----------------------------------------------------------------------------------------------------
# Small pure helpers.

def median(xs):
    return float(statistics.median(xs)) if xs else None


def spread(values) -> dict:
    """Median, min, max and stdev of one measurement's repeats."""
    vals = [float(v) for v in values]
    return {"n": len(vals), "values": vals, "median": median(vals), "min": min(vals), "max": max(vals),
            "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def make_batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive prompt indices in batches of batch_size (the last may be smaller)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def pure_batches(batches, cats_of_prompt) -> dict:
    """category -> indices of the batches that hold only that category; categories split across a
    mixed batch get no entry (their time cannot be separated)."""
    by_cat: dict[str, list[int]] = {}
    mixed = set()
    for bi, b in enumerate(batches):
        cs = {cats_of_prompt[i] for i in b}
        if len(cs) == 1:
            by_cat.setdefault(next(iter(cs)), []).append(bi)
        else:
            mixed |= cs
    return {c: bis for c, bis in by_cat.items() if c not in mixed}


def error_text(err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {first}"


# ----------------------------------------------------------------------------------------------------
# The summary: raw passes + costs -> rows.

def summarise(measured: list[Measured], cats_of_prompt: list[str], costs: dict, mixed: bool = False) -> list[BenchRow]:
    """One row per configuration and category (and "all"), from the timed passes.

    cats_of_prompt: the category of each prompt (index = prompt); costs: batch size -> {"c": float,
    "v": {gamma: float}} (a batch size without costs gets no prediction); mixed: every speculative row's
    rounds drafted varying counts (the n-gram draft's match sizes each round), so its prediction is over
    the counts drafted (predicted_speedup_mix), as gamma auto's. The greedy reference
    outputs and the speedups are looked up after every row exists, so the order of `measured` does
    not matter."""
    reference = {(m.setting.temperature, m.setting.batch_size): m.passes[0].outputs
                 for m in measured if m.setting.method == "ar" and m.passes and m.error is None}
    categories = list(dict.fromkeys(cats_of_prompt))
    rows = []
    for m in measured:
        s = m.setting
        if m.error is not None or not m.passes:
            rows.append(BenchRow(s.method, s.gamma, s.temperature, s.batch_size, num_prompts=len(cats_of_prompt),
                                 error=m.error or "no timed pass"))
            continue
        groups = {"all": list(range(len(m.batches)))}
        groups.update(pure_batches(m.batches, cats_of_prompt))
        # llama.cpp runs other kernels on the GGUF (no check of specdec; bench records its agreement apart)
        checked = is_greedy(s.temperature) and s.method not in ("ar", "llamacpp")
        ref = reference.get((s.temperature, s.batch_size)) if checked else None
        for cat in ["all"] + [c for c in categories if c in groups]:
            rows.append(_row(m, cat, groups[cat], ref, costs.get(s.batch_size), mixed))
    return with_speedups(rows)


def _row(m: Measured, category: str, batch_ids: list, reference, costs, mixed: bool = False) -> BenchRow:
    """The row of one configuration over the prompts of the batches `batch_ids`."""
    s, passes = m.setting, m.passes
    prompts = [i for bi in batch_ids for i in m.batches[bi]]
    toks = [sum(len(p.outputs[i]) for i in prompts) for p in passes]       # [repeat]
    walls = [sum(p.walls[bi] for bi in batch_ids) for p in passes]         # [repeat]
    tps = [t / w if w > 0 else 0.0 for t, w in zip(toks, walls)]
    decode = None
    if all(st is not None for p in passes for st in p.stats):   # specdec's and llama.cpp's: prefill timed apart
        dec_walls = [w - sum(p.stats[bi].prefill_s for bi in batch_ids) for w, p in zip(walls, passes)]
        decode = median([t / w if w > 0 else 0.0 for t, w in zip(toks, dec_walls)])
    row = BenchRow(s.method, s.gamma, s.temperature, s.batch_size, category, num_prompts=len(prompts),
                   new_tokens=toks[0], wall_s=median(walls), tokens_per_s=median(tps), decode_tokens_per_s=decode,
                   target_calls=sum(passes[0].calls[bi] for bi in batch_ids),
                   repeats={"tokens_per_s": spread(tps), "wall_s": spread(walls), "new_tokens": toks})
    if reference is not None:
        row.outputs_match_ar = all(p.outputs[i] == reference[i] for p in passes for i in prompts)
    row.repeated_share = repeated_share([passes[0].outputs[i] for i in prompts])
    if s.method in ("ar", "llamacpp"):   # plain decoding
        row.mean_accepted_length = 1.0
    elif s.method == "sd":
        st = DecodeStats.merged([p.stats[bi] for p in passes for bi in batch_ids])
        row.acceptance_rate, row.alpha, row.draft_steps = st.acceptance_rate, st.alpha, st.draft_steps
        row.mean_accepted_length, row.per_position_acceptance = st.mean_accepted_length, st.per_position_acceptance
        row.mean_gamma, row.gamma_counts = st.mean_gamma, st.gamma_counts
    elif row.target_calls:
        # HF exposes no acceptance counts; tokens per target forward is its mean acceptance length.
        row.mean_accepted_length = toks[0] / row.target_calls
    if costs is not None and s.method == "sd" and (s.gamma == AUTO or mixed):
        row.draft_cost_ratio = costs["c"]
        row.predicted_speedup = predicted_speedup_mix(row.alpha, row.gamma_counts, costs["c"], costs["v"])
    elif costs is not None and s.gamma is not None:
        c, v = costs["c"], costs["v"][s.gamma]
        row.draft_cost_ratio, row.verify_cost_ratio = c, v
        if s.method == "sd":
            row.predicted_speedup = predicted_speedup(row.alpha, s.gamma, c, v)
            row.predicted_speedup_tau = predicted_speedup(row.alpha, s.gamma, c, v, tau=row.mean_accepted_length)
    return row


REPEAT_SPAN = 32   # tokens: a span this long seen earlier in the same output is a verbatim self-repeat


def repeated_share(outputs: list, span: int = REPEAT_SPAN) -> float | None:
    """The share of the tokens of `outputs` ([prompt] token lists) that end a span of `span` tokens
    already seen earlier in the same output; None without tokens.
    Why: a small model's greedy answer often loops, copying itself for hundreds of tokens, and a lookup
    draft (the n-gram draft, prompt lookup) is accepted there almost always. SmolLM2-135M greedy at 1024
    new tokens on Spec-Bench's first turns: 0.674 of its tokens, 0-0.055 in the three categories where
    the lookup gained least (bench/RESULTS.md, "Spec-Bench's own budget"); a speedup over such output
    measures how fast the loop decodes, so bench reports this share beside it. O(tokens) set lookups."""
    total = repeated = 0
    for out in outputs:
        seen = set()
        for t in range(span, len(out) + 1):
            gram = tuple(out[t - span:t])
            repeated += gram in seen
            seen.add(gram)
        total += len(out)
    return repeated / total if total else None


def with_speedups(rows: list[BenchRow]) -> list[BenchRow]:
    """Every non-"ar" row's speedup over the "ar" row with the same temperature, batch size and category
    (None where that row is absent or failed), and the same for the decode phase alone."""
    base = {r.key: r for r in rows if r.method == "ar" and r.error is None}

    def ratio(x, b):
        return x / b if b and x is not None else None

    out = []
    for r in rows:
        b = base.get(r.key)
        if r.method != "ar":
            r = dataclasses.replace(r, speedup=ratio(r.tokens_per_s, b and b.tokens_per_s),
                                    decode_speedup=ratio(r.decode_tokens_per_s, b and b.decode_tokens_per_s))
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------------
# Reading results.json back (plots, demo, resume).

def read_results(path) -> tuple[dict, list[BenchRow]]:
    """(meta, rows) of a results.json written by `specdec bench`; one-line errors name the file."""
    path = Path(path)
    data = read_json(path, "is it a specdec bench results.json?")
    if not isinstance(data, dict) or "runs" not in data:
        raise ValueError(f"{path} has no 'runs' list; is it a specdec bench results.json?")
    runs = data["runs"]
    if not isinstance(runs, list):
        raise ValueError(f"{path}: 'runs' is a {type(runs).__name__}, not a list of rows; is it a specdec "
                         "bench results.json?")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return meta, [BenchRow.from_dict(r, f"{path}: row {i}") for i, r in enumerate(runs)]


# ----------------------------------------------------------------------------------------------------
# gamma auto against the fixed gammas and HF's schedules (the bench's summary, the demo's comparison).

def auto_report(rows: list[BenchRow]) -> list[dict]:
    """Per (temperature, batch size, category) cell holding a gamma-auto row: auto's tokens/s and mean
    count, the best fixed gamma's, the best HF schedule's (constant, default, heuristic) and the ratios
    auto / best fixed and auto / best HF (None where that side has no measured row)."""
    ok = [r for r in rows if r.error is None and r.tokens_per_s]
    out = []
    for a in (r for r in ok if r.method == "sd" and r.gamma == AUTO):
        cell = [r for r in ok if r.key == a.key]
        fixed = max((r for r in cell if r.method == "sd" and r.gamma != AUTO), key=lambda r: r.tokens_per_s,
                    default=None)
        hf = max((r for r in cell if r.method.startswith("hf_assisted")), key=lambda r: r.tokens_per_s, default=None)
        out.append({"temperature": a.temperature, "batch_size": a.batch_size, "category": a.category,
                    "auto_tokens_per_s": a.tokens_per_s, "auto_mean_gamma": a.mean_gamma, "auto_speedup": a.speedup,
                    "best_fixed_gamma": fixed and fixed.gamma, "best_fixed_tokens_per_s": fixed and fixed.tokens_per_s,
                    "auto_vs_best_fixed": fixed and a.tokens_per_s / fixed.tokens_per_s,
                    "best_hf": hf and (hf.method if hf.gamma is None else f"{hf.method} {hf.gamma}"),
                    "best_hf_tokens_per_s": hf and hf.tokens_per_s,
                    "auto_vs_best_hf": hf and a.tokens_per_s / hf.tokens_per_s})
    return out


def auto_shift(before: list[BenchRow], after: list[BenchRow], category: str = "all") -> list[dict]:
    """gamma auto's choices in two runs of the same cells (e.g. before and after distilling the draft):
    per (temperature, batch size), the mean count, the histogram, alpha and the speedup of each, and the
    change of the mean count (positive: auto drafts more, as it should when alpha rises)."""
    def autos(rows):
        return {(r.temperature, r.batch_size): r for r in rows
                if r.method == "sd" and r.gamma == AUTO and r.category == category and r.error is None}

    b, a = autos(before), autos(after)
    out = []
    for key in sorted(set(b) & set(a)):
        x, y = b[key], a[key]
        out.append({"temperature": key[0], "batch_size": key[1],
                    "alpha_before": x.alpha, "alpha_after": y.alpha,
                    "mean_gamma_before": x.mean_gamma, "mean_gamma_after": y.mean_gamma,
                    "gamma_change": (y.mean_gamma or 0.0) - (x.mean_gamma or 0.0),
                    "gamma_counts_before": x.gamma_counts, "gamma_counts_after": y.gamma_counts,
                    "speedup_before": x.speedup, "speedup_after": y.speedup})
    return out
