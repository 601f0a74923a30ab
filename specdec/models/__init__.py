"""Models: loading a target / draft pair and its tokenizer, the vocabulary check, the bundled pair."""
from .load import (ASSETS, DTYPES, bundled_pair, check_vocab, load_model, load_pair, load_tokenizer,  # noqa: F401
                   resolve_dtype)
