"""Models: loading a target / draft pair and its tokenizer, the vocabulary check, the bundled pair, GGUF
files (converted once into the cache: gguf_cache.py), named pairs (pairs.py) and the models block of the
commands' configs (options.py)."""
from .load import (ASSETS, DTYPES, bundled_pair, check_vocab, context_of, load_config, load_model,  # noqa: F401
                   load_pair, load_target, load_tokenizer, local_source, resolve_dtype)
from .pairs import PAIRS, apply_pair, draft_problem, resolve_pair  # noqa: F401
