"""The bundled target/draft pair in specdec/assets loads with plain transformers and fits its budget."""

import json
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1] / "specdec" / "assets"
TARGET, DRAFT = ASSETS / "target", ASSETS / "draft"
MAX_WEIGHT_BYTES = 32_000_000

if not all((d / "config.json").exists() and list(d.glob("*.safetensors")) for d in (TARGET, DRAFT)):
    pytest.skip("bundled pair not exported yet (bench/train_pair.py --export)", allow_module_level=True)

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402


@pytest.fixture(scope="module")
def models():
    return {name: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
            for name, d in (("target", TARGET), ("draft", DRAFT))}


@pytest.fixture(scope="module")
def tokenizers():
    return {name: AutoTokenizer.from_pretrained(d) for name, d in (("target", TARGET), ("draft", DRAFT))}


def test_same_tokenizer_with_eos_and_pad(tokenizers):
    t, d = tokenizers["target"], tokenizers["draft"]
    assert t.get_vocab() == d.get_vocab()
    for tok in (t, d):
        assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id is not None
        assert tok.pad_token == "<|pad|>" and tok.pad_token_id is not None
        assert tok.pad_token_id != tok.eos_token_id
    text = "def add(a, b):\n    return a + b  # sum\n"
    ids = t(text)["input_ids"]
    assert ids == d(text)["input_ids"]
    assert t.decode(ids) == text  # byte-level: lossless round trip


def test_models_load_as_llama_with_matching_vocab(models, tokenizers):
    vocab = len(tokenizers["target"])
    for name, model in models.items():
        assert model.config.model_type == "llama", name
        assert model.config.vocab_size == vocab, name
        assert model.get_output_embeddings().weight.shape[0] == vocab, name
        assert model.config.eos_token_id == tokenizers[name].eos_token_id
        assert model.config.pad_token_id == tokenizers[name].pad_token_id
        assert next(model.parameters()).dtype == torch.float32
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert n["target"] > 5 * n["draft"]


def test_tiny_forward(models, tokenizers):
    ids = tokenizers["target"]("import os\nprint(os.getcwd())\n", return_tensors="pt")["input_ids"]
    for name, model in models.items():
        with torch.no_grad():
            logits = model(ids).logits  # [1, T, V]
        assert logits.shape == (1, ids.shape[1], model.config.vocab_size), name
        assert torch.isfinite(logits).all(), name


def test_weights_are_half_precision_and_within_budget():
    total = 0
    for d in (TARGET, DRAFT):
        files = list(d.glob("*.safetensors"))
        total += sum(f.stat().st_size for f in files)
        cfg = json.loads((d / "config.json").read_text())
        assert cfg.get("dtype", cfg.get("torch_dtype")) in ("float16", "bfloat16"), d
    assert total <= MAX_WEIGHT_BYTES, f"shipped weights {total:,} B > {MAX_WEIGHT_BYTES:,} B"


def test_generation_config_and_cards():
    for d in (TARGET, DRAFT):
        gen = GenerationConfig.from_pretrained(d)
        assert gen.eos_token_id is not None and gen.pad_token_id is not None
        card = (d / "README.md").read_text()
        for key in ("bench/train_pair.py", "tokens seen", "held-out loss", "parameters", "decode step"):
            assert key in card, (d, key)
