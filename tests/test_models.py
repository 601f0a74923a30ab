"""Model loading and the vocabulary check."""
import pytest
import torch

from conftest import tiny_llama
from specdec import check_vocab, load_model, load_pair, load_tokenizer


def _tokenizer(words, eos="</s>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", eos] + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token=eos)


WORDS = [f"w{i}" for i in range(61)]  # 64 tokens with the 3 specials


def _save_pair(tmp_path, draft_words=WORDS, draft_vocab=64):
    t_dir, d_dir = tmp_path / "target", tmp_path / "draft"
    tiny_llama(seed=0).save_pretrained(t_dir)
    _tokenizer(WORDS).save_pretrained(t_dir)
    tiny_llama(seed=1, num_layers=1, vocab_size=draft_vocab).save_pretrained(d_dir)
    _tokenizer(draft_words).save_pretrained(d_dir)
    return t_dir, d_dir


def test_load_pair_and_generate(tmp_path):
    from specdec import SpeculativeDecoder, autoregressive_generate

    t_dir, d_dir = _save_pair(tmp_path)
    target, draft, tok, vocab = load_pair(t_dir, d_dir, dtype="float32")
    assert vocab == 64 and tok.padding_side == "left"
    assert not target.training and not any(p.requires_grad for p in target.parameters())
    enc = tok(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    sd = SpeculativeDecoder(target, draft, gamma=2, vocab_size=vocab).generate(enc.input_ids, enc.attention_mask,
                                                                              max_new_tokens=8)
    ar = autoregressive_generate(target, enc.input_ids, enc.attention_mask, max_new_tokens=8)
    assert sd.new_tokens == ar.new_tokens


def test_bf16_load(tmp_path):
    t_dir, _ = _save_pair(tmp_path)
    assert load_model(t_dir, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(t_dir, dtype="int3")


def test_vocab_mismatch_is_a_clear_error(tmp_path):
    t_dir, d_dir = _save_pair(tmp_path, draft_words=WORDS[:-1] + ["other"])
    with pytest.raises(ValueError, match="tokenizers differ.*64 tokens"):
        load_pair(t_dir, d_dir)
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_vocab(_tokenizer(WORDS), _tokenizer(list(reversed(WORDS))))


def test_padded_draft_logits_are_fine(tmp_path):
    """A draft with a wider (padded) lm_head than the tokenizer still pairs; shared size = the tokenizer's."""
    t_dir, d_dir = _save_pair(tmp_path, draft_vocab=80)
    _, _, _, vocab = load_pair(t_dir, d_dir)
    assert vocab == 64


def test_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer("./nowhere/model")
    with pytest.raises(ValueError, match="cannot load"):
        load_model(tmp_path)  # exists, but holds no model
