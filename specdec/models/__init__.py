"""Models: loading a target / draft pair and its tokenizer, the vocabulary check, the bundled pair."""
from .load import (ASSETS, DTYPES, bundled_pair, check_vocab, context_of, load_config, load_model,  # noqa: F401
                   load_pair, load_tokenizer, resolve_dtype)
