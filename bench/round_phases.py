"""Where a speculative decode round's time goes: each named step of SpeculativeDecoder, and its forwards.

    python bench/round_phases.py --threads 1 --out bench/results/fast_path/round_phases_cpu.json

The cost model (bench's `predicted`) counts only forwards: gamma draft steps and one verify. This script
decodes the bench's built-in prompts with the bench's engine (`--quantize auto`: int8 target, float draft
on the CPU) and times, per round, the decoder's named steps (draft, score, verify, commit, retire:
specdec/engine/decoding.py) and every forward inside them, so the time a round spends outside the forwards
(sampling, the rejection test, the host read, cache bookkeeping) shows beside them. Per (gamma,
temperature): the median of each step and of each forward shape over the rounds of the timed passes
(one untimed pass first), and the decode milliseconds per round (prefill excluded). The times come from
the decoder's public hook, generate(on_section=...): host perf_counter, so on CUDA they are launch
times, not the GPU's (use the bench).
Prints a table and ends with one JSON line; --out writes the JSON file.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as the CLI: the NumPy draft path wants one BLAS thread

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec import SpeculativeDecoder  # noqa: E402
from specdec.common.config import option, parse_script_args, to_dict  # noqa: E402
from specdec.common.values import check_gamma, check_temperature  # noqa: E402
from specdec.models import load_pair  # noqa: E402
from specdec.data.prompts import builtin  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.common.table import format_table  # noqa: E402
from specdec.engine.devices import resolve_device  # noqa: E402

STEPS = ("draft", "score", "verify", "commit", "retire")   # the decode round's named steps
FORWARDS = {"draft_forward": "draft", "target_forward": "target"}


@dataclass
class PhasesConfig:
    gamma: tuple[int, ...] = option((2, 4), "draft tokens per round, comma-separated", group="decoding")
    temperature: tuple[float, ...] = option((0.0, 1.0), "temperatures, comma-separated", group="decoding")
    num_prompts: int = option(2, "built-in prompts per category", group="decoding")
    max_new_tokens: int = option(64, "new tokens per prompt", group="decoding")
    repeats: int = option(2, "timed passes over the prompts (after one untimed pass)", group="decoding")
    quantize: str = option("auto", "as specdec bench: auto (int8 target, float draft on the CPU), none, int8",
                           choices=("auto", "none", "int8"), group="models")
    device: str = option("cpu", "cpu | cuda | auto", group="machine")
    threads: int | None = option(1, "torch CPU threads", group="machine")
    out: str | None = option(None, "JSON output path", group="output")

    def __post_init__(self):
        for name in ("num_prompts", "max_new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        self.gamma = tuple(check_gamma(g, "--gamma", auto=False) for g in self.gamma)
        self.temperature = tuple(check_temperature(t, "--temperature") for t in self.temperature)


class _Clock:
    """The on_section hook: each named step's and each forward's seconds, by name (forwards by shape)."""

    def __init__(self):
        self.steps: dict = {}
        self.forwards: dict = {}

    def __call__(self, name: str, seconds: float, tokens) -> None:
        if name in FORWARDS:
            self.forwards.setdefault(f"{FORWARDS[name]} S={tokens}", []).append(seconds)
        else:
            self.steps.setdefault(name, []).append(seconds)

    def clear(self):
        self.steps.clear()
        self.forwards.clear()


def _ms(xs) -> float:
    return 1e3 * statistics.median(xs)


def measure(cfg: PhasesConfig) -> dict:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cpu = device.type == "cpu"
    tq = ("int8" if cpu else "none") if cfg.quantize == "auto" else cfg.quantize
    target, draft, tok, vocab = load_pair(None, None, device=str(device), quantize=tq,
                                          draft_quantize="none" if cfg.quantize == "auto" else tq)
    prompts = [tok([p["prompt"]], return_tensors="pt").to(device) for p in builtin(max_per_category=cfg.num_prompts)]
    clock, rows = _Clock(), []
    for g in cfg.gamma:
        dec = SpeculativeDecoder(target, draft, gamma=g, vocab_size=vocab)
        for T in cfg.temperature:
            for rep in range(cfg.repeats + 1):
                if rep <= 1:      # pass 0 is untimed: start counting at pass 1
                    clock.clear()
                    decode_s, rounds = 0.0, 0
                for enc in prompts:
                    s = dec.generate(enc.input_ids, enc.attention_mask, max_new_tokens=cfg.max_new_tokens,
                                     temperature=T, seed=rep, on_section=clock).stats
                    decode_s += s.total_s - s.prefill_s
                    rounds += s.target_calls
            rows.append({"gamma": g, "temperature": T, "rounds": rounds, "round_ms": 1e3 * decode_s / rounds,
                         **{f"{k}_ms": _ms(clock.steps[k]) for k in STEPS},
                         "forwards_ms": {k: _ms(v) for k, v in sorted(clock.forwards.items()) if len(v) >= 10}})
    return {"env": environment(str(device)), "config": to_dict(cfg), "engine": {"target": tq}, "rows": rows}


COLUMNS = [("gamma", "gamma", 5, "d"), ("temperature", "T", 3, "g"), ("rounds", "rounds", 6, "d"),
           ("round_ms", "mean round ms", 13, ".2f"), ("draft_ms", "draft", 6, ".2f"), ("score_ms", "score", 6, ".2f"),
           ("verify_ms", "verify", 6, ".2f"), ("commit_ms", "commit", 6, ".2f"), ("retire_ms", "retire", 6, ".2f")]


def main(argv=None) -> int:
    cfg = parse_script_args(argv, __doc__, PhasesConfig)
    result = measure(cfg)
    print(format_table(result["rows"], COLUMNS))
    for r in result["rows"]:
        print(f"gamma {r['gamma']} T {r['temperature']:g} forwards (median ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["forwards_ms"].items()))
    if cfg.out:
        write_json_atomic(cfg.out, result, indent=1)
    print('{"out": %s, "rows": %d}' % (f'"{cfg.out}"' if cfg.out else "null", len(result["rows"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
