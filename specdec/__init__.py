"""specdec: lossless, batched speculative decoding for Hugging Face causal LMs.

The public API is re-exported here and imported on first use (PEP 562), so `specdec --help` and the
light modules (config, results, plots) start without importing torch."""
import importlib
import sys
import types

_EXPORTS = {
    "SpeculativeDecoder": "engine.decoding", "autoregressive_generate": "engine.decoding",
    "GenerationOutput": "engine.decoding", "SamplingParams": "engine.params", "DecodeStats": "engine.stats",
    "predicted_speedup": "costmodel.predict", "expected_tokens_per_step": "costmodel.predict",
    "FixedGamma": "costmodel.policy", "AutoGamma": "costmodel.policy", "AutoConfig": "costmodel.policy",
    "bundled_pair": "models",
    "load_pair": "models", "load_model": "models", "load_tokenizer": "models", "check_vocab": "models",
    "verify": "engine.verify", "VerifyResult": "engine.verify",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'specdec' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package; `specdec.engine.verify` the submodule would
    then hide `specdec.engine.verify` the function. An exported name keeps meaning the export."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
