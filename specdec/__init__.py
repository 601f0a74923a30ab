"""specdec: lossless, batched speculative decoding for Hugging Face causal LMs."""
from .decoding import GenerationOutput, SamplingParams, SpeculativeDecoder, autoregressive_generate
from .metrics import DecodeStats, expected_tokens_per_step, predicted_speedup
from .models import bundled_pair, check_vocab, load_model, load_pair, load_tokenizer
from .verify import VerifyResult, verify

__all__ = [
    "SpeculativeDecoder", "autoregressive_generate", "verify", "VerifyResult", "GenerationOutput", "SamplingParams",
    "DecodeStats", "predicted_speedup", "expected_tokens_per_step", "bundled_pair", "load_pair", "load_model",
    "load_tokenizer", "check_vocab",
]
__version__ = "0.1.0"
