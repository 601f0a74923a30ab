"""llama.cpp's plain decoding of the target's own GGUF file: an optional baseline of `specdec bench`
(method "llamacpp", batch size 1). It needs llama-cpp-python, which compiles llama.cpp when installed
(INSTALL); without it, or when the target is not a GGUF file, the row is absent and the run says why in
one line.

What is compared. The same GGUF file the target was converted from, the same prompt token ids, the same
max_new_tokens, stopping at the same EOS. Greedy (temperature 0): llama.cpp's greedy sampler. Sampled:
its sampler chain reduced to temperature and a seeded draw (top_k 0, top_p 1, min_p 0, typical_p 1, no
repetition penalties), i.e. the distribution specdec samples at that temperature with top_k 0 and top_p
1. The tokens are not specdec's: llama.cpp multiplies the stored Q4_1 / Q8_0 blocks with activations it
quantizes to 8 bits, while specdec's target runs the dequantized float weights, so greedy outputs agree
for a while and then part (bench records how far in meta["llamacpp"]).

Timing, as for specdec's rows: the wall time of the whole generation, and the prompt's forward
(prefill_s) timed apart for the decode-only rate. llama.cpp runs the run's torch thread count
(--threads) for both its decode and its prompt threads.
"""
from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from ..engine.stats import DecodeStats

METHOD = "llamacpp"
INSTALL = ('pip install llama-cpp-python  (compiles llama.cpp for several minutes; '
           'CMAKE_ARGS="-DGGML_NATIVE=ON" builds for this CPU)')
# The sampler chain reduced to temperature + draw: every other stage set to its no-op value.
NEUTRAL_SAMPLING = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                    "frequency_penalty": 0.0, "presence_penalty": 0.0}


# On a CPU with AMX (Intel Sapphire Rapids and later), llama-cpp-python 0.3.36 built natively (its default)
# crashed the process with a segmentation fault on every batch of 2 or more tokens (a prompt), one token at
# a time ran (2-core Xeon VM, 2026-12-05); built without AMX it runs. bench/RESULTS.md, "An n-gram store".
NO_AMX_BUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
                '-DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON '
                '-DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" '
                'pip install --force-reinstall --no-cache-dir llama-cpp-python')   # the build measured
PROBE = """import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=1, verbose=False)
llm.eval([0, 0])
"""


def unavailable(gguf_path) -> str | None:
    """Why there is no llama.cpp row (None: there is one)."""
    if gguf_path is None:
        return "the target is not a GGUF file (llama.cpp runs GGUF files: pass --target FILE.gguf or --pair)"
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        return f"llama-cpp-python is not installed: {INSTALL}"
    return crashes(str(gguf_path)) if spec.origin else None   # a stand-in module (no file) is not probed


@functools.lru_cache(maxsize=8)
def crashes(gguf_path: str) -> str | None:
    """Why llama.cpp cannot run here (None: it can), from a 2-token batch in a child process: a build
    that crashes (see NO_AMX_BUILD) would otherwise take the whole bench process with it."""
    try:
        r = subprocess.run([sys.executable, "-c", PROBE, gguf_path], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "llama.cpp did not evaluate a 2-token batch within 300 s in a probe process"
    if r.returncode == 0:
        return None
    how = f"signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
    last = (r.stderr.strip().splitlines() or [""])[-1][:200]
    return (f"llama.cpp crashed ({how}{': ' + last if last else ''}) evaluating a 2-token batch of {gguf_path} "
            f"in a probe process; a native build on an AMX CPU does: rebuild it with {NO_AMX_BUILD}")


class LlamaCppRunner:
    """One llama.cpp context over the GGUF file, reused for every prompt (each generation starts from an
    empty KV cache)."""

    def __init__(self, gguf_path, n_ctx: int, threads: int, seed: int = 0):
        import llama_cpp

        self.path = Path(gguf_path)
        self.version = getattr(llama_cpp, "__version__", None)
        self.threads = int(threads)
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=int(n_ctx), n_batch=min(512, int(n_ctx)),
                                   n_threads=self.threads, n_threads_batch=self.threads, seed=int(seed),
                                   logits_all=False, verbose=False)

    def describe(self) -> dict:
        return {"gguf": str(self.path), "llama_cpp_python": self.version, "threads": self.threads,
                "sampling": {"greedy": "llama.cpp greedy sampler",
                             "sampled": {"temperature": "the row's", **NEUTRAL_SAMPLING}}}

    def generate(self, ids: list, max_new_tokens: int, temperature: float, seed: int, eos_token_id):
        """(new token ids, DecodeStats with new_tokens, target_calls, prefill_s, total_s). The prompt is
        evaluated first on its own (timed as prefill); `generate` then finds it already evaluated and
        samples from its logits without evaluating it again."""
        llm = self.llm
        llm.reset()                      # an empty KV cache: no prefix reuse from the previous prompt
        llm.set_seed(int(seed))          # the draw's generator is seeded when generate builds the sampler
        t0 = time.perf_counter()
        llm.eval(list(ids))
        t1 = time.perf_counter()
        out: list[int] = []
        if max_new_tokens > 0:
            for tok in llm.generate(list(ids), temp=float(temperature), reset=True, **NEUTRAL_SAMPLING):
                out.append(int(tok))
                if len(out) >= max_new_tokens or (eos_token_id is not None and tok == eos_token_id):
                    break
        t2 = time.perf_counter()
        # Each token after the first costs one forward; the first comes from the prompt's logits.
        stats = DecodeStats(new_tokens=len(out), target_calls=max(0, len(out) - 1), prefill_calls=1,
                            prefill_s=t1 - t0, total_s=t2 - t0)
        return out, stats


def agreement(outputs: list, reference: list) -> dict:
    """How far llama.cpp's greedy outputs follow another decoder's ([prompt] token lists; None = not run):
    identical outputs, and the common prefix in tokens (mean, and as a fraction of the reference's)."""
    pairs = [(o, r) for o, r in zip(outputs, reference) if o is not None and r is not None]
    prefixes = [_common_prefix(o, r) for o, r in pairs]
    total = sum(len(r) for _, r in pairs)
    return {"prompts": len(pairs), "identical": sum(o == r for o, r in pairs),
            "mean_common_prefix": sum(prefixes) / len(pairs) if pairs else None,
            "common_prefix_fraction": sum(prefixes) / total if total else None}


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
