"""The cost model of speculative decoding and the gamma="auto" policy: measure, cache, predict, choose.

  predict.py   the speedup model and the math auto chooses by (pure: numbers in, numbers out)
  table.py     the cost table: entries of step costs and round times, read back and checked
  measure.py   step and round costs, timed on a decoder it is handed (it never imports the engine)
  cache.py     round and step costs on disk, keyed by everything they depend on
  policy.py    draft-count policies: FixedGamma, AutoGamma (AutoConfig), LookupAuto (the n-gram lookup's
               auto), the loop's protocol
The engine imports this package, never the other way round. Names are imported on first use (PEP 562),
so the pure parts (predict, table) load without torch.
"""
import importlib

AUTO = "auto"   # gamma="auto": each round's draft count is AutoGamma's choice

_EXPORTS = {
    **dict.fromkeys(("expected_tokens_per_step", "predicted_speedup", "predicted_speedup_mix", "verify_cost",
                     "best_draft_count", "linear_round_costs", "round_cost", "robust_line", "shrunk_alpha",
                     "discounted_counts", "long_count"), "predict"),
    **dict.fromkeys(("read_entry", "read_table", "round_costs", "costs_at"), "table"),
    **dict.fromkeys(("measure_step_costs", "measure_round_costs", "CycleGammas", "interleaved_medians", "sync"),
                    "measure"),
    **dict.fromkeys(("CostCache", "CachedRoundCosts", "CachedStepCosts", "cost_key", "context_bucket", "default_cache_dir",
                     "engine_sources"), "cache"),
    **dict.fromkeys(("FixedGamma", "AutoGamma", "AutoConfig", "LookupAuto"), "policy"),
}
__all__ = ["AUTO", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
