"""specdec: lossless, batched speculative decoding for Hugging Face causal LMs."""
from .verify import VerifyResult, verify

__all__ = ["verify", "VerifyResult"]
__version__ = "0.1.0"
