"""Model families: tiny random models of the causal-LM families transformers ships, built in-process.
Greedy speculative output = plain output = transformers' own `generate()` of the same model, at batch
size 1 and in a ragged batch, at gamma 1, 3 and auto; windowed models (sliding, chunked) with windows
shorter than the context; families specdec cannot run exactly refused with one line naming the type."""
import copy
from types import SimpleNamespace

import pytest
import torch

from specdec import SpeculativeDecoder, autoregressive_generate
from specdec.engine import families
from specdec.engine.kvcache import KVCache
from specdec.engine.runner import ModelRunner
from test_decoding import AUTO_COSTS, _noisy_copy

VOCAB, NEW, WINDOW = 128, 16, 6
# No EOS: every row decodes all NEW tokens (the EOS logic does not depend on the family: test_decoding).
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=None, pad_token_id=0)

MIXED = ["sliding_attention", "full_attention"]   # per-layer masks (a dict by layer type)
# name: (model_type, config overrides, weight scale). Windows (6) are shorter than every decode here (up to
# 9 + 16 positions). The scale gives each family peaked but varied outputs (Gemma2 and Gemma3, with their
# scaled embeddings and extra norms, saturate into one repeated token at 0.3).
FAMILIES = {
    "llama": ("llama", {}, 0.3),
    "qwen2": ("qwen2", {}, 0.3),
    "qwen3": ("qwen3", {"head_dim": 8}, 0.3),
    "gemma": ("gemma", {"head_dim": 8}, 0.3),
    "phi": ("phi", {}, 0.3),
    "gpt2": ("gpt2", {}, 0.3),
    "gpt_neox": ("gpt_neox", {}, 0.3),
    "gptj": ("gptj", {"rotary_dim": 4}, 0.3),
    "opt": ("opt", {"word_embed_proj_dim": 32, "ffn_dim": 64}, 0.3),
    "falcon": ("falcon", {}, 0.3),
    "cohere": ("cohere", {}, 0.3),
    "olmo": ("olmo", {}, 0.3),
    "olmo2": ("olmo2", {}, 0.3),
    "stablelm": ("stablelm", {}, 0.3),
    "gpt_bigcode": ("gpt_bigcode", {}, 0.3),
    "codegen": ("codegen", {"rotary_dim": 4}, 0.3),
    "granite": ("granite", {}, 0.3),
    "mistral_window": ("mistral", {"sliding_window": WINDOW}, 0.3),
    "qwen2_window": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}, 0.3),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "head_dim": 8}, 0.02),
    "gemma3_text": ("gemma3_text", {"sliding_window": WINDOW, "head_dim": 8, "layer_types": MIXED}, 0.02),
    "phi3_window": ("phi3", {"sliding_window": WINDOW}, 0.3),
    "starcoder2_window": ("starcoder2", {"sliding_window": WINDOW}, 0.3),
    "cohere2": ("cohere2", {"sliding_window": WINDOW, "layer_types": MIXED}, 0.3),
    "mixtral_window": ("mixtral", {"sliding_window": WINDOW, "num_local_experts": 4}, 0.3),
    "gpt_oss": ("gpt_oss", {"sliding_window": WINDOW, "num_local_experts": 4, "head_dim": 8}, 0.3),
    "olmo3": ("olmo3", {"sliding_window": WINDOW, "layer_types": MIXED}, 0.3),
    "llama4_text_chunked": ("llama4_text", {"attention_chunk_size": WINDOW, "head_dim": 8, "num_local_experts": 2,
                                            "intermediate_size_mlp": 64,
                                            "layer_types": ["chunked_attention", "full_attention"]}, 0.3),
}


def build(model_type: str, scale: float = 0.3, seed: int = 0, **over):
    """A random model of `model_type`, weight matrices drawn at `scale` (larger than transformers' default
    init: peaked, seed-dependent outputs)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**BASE, **over})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, scale)
    return model


def ragged(B=3, P=9, seed=5):
    """Left-padded prompts: row i has P - 2i tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for i in range(B):
        mask[i, :2 * i] = 0
    ids[mask == 0] = 0
    return ids, mask


def hf_generate(model, ids, mask) -> list:
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         pad_token_id=0)
    return [row[ids.shape[1]:].tolist() for row in out]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """One family's target, a noisy copy as draft, its prompts, and generate()'s outputs (ragged, and
    row 1 alone)."""
    model_type, over, scale = FAMILIES[request.param]
    target = build(model_type, scale, **over)
    ids, mask = ragged()
    one = ids[1:2, 2:]
    draft = _noisy_copy(target, scale / 6)
    return SimpleNamespace(name=request.param, target=target, draft=draft, ids=ids, mask=mask,
                           one=one, want=hf_generate(target, ids, mask), want_one=hf_generate(target, one, None))


def test_plain_equals_generate(family):
    f = family
    assert autoregressive_generate(f.target, f.ids, f.mask, max_new_tokens=NEW).new_tokens == f.want
    assert autoregressive_generate(f.target, f.one, max_new_tokens=NEW).new_tokens == f.want_one
    if families.mask_plan(f.target.config) is not None:
        # Negative control: the same weights without the window decode differently here, so these
        # equalities check the window (a decode that ignored it would fail them).
        wide = copy.deepcopy(f.target)
        for name in ("sliding_window", "attention_chunk_size"):
            if getattr(wide.config, name, None) is not None:
                setattr(wide.config, name, 10 ** 6)
        assert hf_generate(wide, f.ids, f.mask) != f.want


@pytest.mark.parametrize("gamma", [1, 3, "auto"])
def test_speculative_equals_generate(family, gamma):
    f = family
    dec = SpeculativeDecoder(f.target, f.draft, gamma=gamma, costs=AUTO_COSTS if gamma == "auto" else None)
    out = dec.generate(f.ids, f.mask, max_new_tokens=NEW)
    assert out.new_tokens == f.want
    assert 0.0 < out.stats.acceptance_rate < 1.0      # rejections happened: holes in a ragged batch
    assert dec.generate(f.one, max_new_tokens=NEW).new_tokens == f.want_one


def test_windows_follow_transformers_rule():
    """Per-layer windows from the config, as transformers reads them: layer_types first, else
    sliding_window, else attention_chunk_size; a window no shorter than the context is full attention."""
    W = families.Window
    cfg = build("gemma2", sliding_window=WINDOW, head_dim=8, num_hidden_layers=3).config
    assert families.layer_windows(cfg) == [("sliding_attention", W("sliding", 6)), ("full_attention", None),
                                           ("sliding_attention", W("sliding", 6))]
    assert families.mask_plan(cfg) == {"sliding_attention": W("sliding", 6), "full_attention": None}
    assert families.mask_plan(build("mistral", sliding_window=WINDOW).config) == W("sliding", 6)
    assert families.mask_plan(build("mistral", sliding_window=128).config) is None     # never binds
    assert families.mask_plan(build("mistral", sliding_window=None).config) is None
    assert families.mask_plan(build("qwen2", sliding_window=WINDOW).config) is None    # use_sliding_window off
    assert families.mask_plan(build("llama").config) is None


def test_windowed_mask_counts_positions_not_columns():
    """Row 0 has a hole (a rejected draft) and row 1 left padding: the window spans positions, so the
    hole and the pad do not narrow it."""
    kv = KVCache(batch=2, capacity=16, dtype=torch.float32, device="cpu", positions=True)
    valid = torch.tensor([[True, True, True, False, True], [False, True, True, True, True]])
    pos = torch.tensor([[0, 1, 2, 3, 3], [0, 0, 1, 2, 3]])
    kv.begin(valid, pos)
    kv.end()
    full = kv.begin(torch.ones(2, 1, dtype=torch.bool), torch.tensor([[4], [4]]))
    seen = (kv.windowed(full, families.Window("sliding", 3)) == 0)[:, 0, 0]    # [B, L]
    # Row 0's column 2 is 3 columns back but 2 positions back (the hole): inside the window.
    assert seen.tolist() == [[False, False, True, False, True, True], [False, False, False, True, True, True]]
    seen = (kv.windowed(full, families.Window("chunked", 4)) == 0)[:, 0, 0]
    assert seen.tolist() == [[False, False, False, False, False, True], [False, False, False, False, False, True]]


@pytest.mark.parametrize("static", [False, True])
def test_windowed_cache_survives_compaction_and_row_selection(static):
    """Positions move with their columns: after a compaction and a finished row, the windowed runner's
    next logits still equal a cache-free forward over the row's last WINDOW tokens (sliding window), in
    the dynamic and the static (CUDA-graph) cache layout."""
    model = build("mistral", sliding_window=WINDOW)
    ids, mask = ragged(B=3, P=9)
    r = ModelRunner(model, batch=3, capacity=64, static=static)
    r.prefill(ids, mask)
    seqs = [ids[b, mask[b].bool()].tolist()[:-1] for b in range(3)]
    pos, pending = mask.sum(1) - 1, ids[:, -1]
    block = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    r.forward(torch.cat([pending[:, None], block[:, :2]], 1), pos[:, None] + torch.arange(3),
              torch.ones(3, 3, dtype=torch.bool))
    keep = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    r.set_tail_validity(keep)
    for b in range(3):
        seqs[b] += [int(pending[b])] + block[b, :int(keep[b].sum()) - 1].tolist()
    pos, pending = pos + keep.sum(1), torch.tensor([21, 22, 23])
    r.kv.compact()
    r.select_rows(torch.tensor([0, 2]))
    got = r.peek(pending[[0, 2], None], pos[[0, 2], None], torch.ones(2, 1, dtype=torch.bool))[:, -1]
    for i, b in enumerate((0, 2)):
        want = model(torch.tensor([seqs[b] + [int(pending[b])]])).logits[0, -1]
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- refused

# name: (model_type, config overrides, what the error says). Checked from the config alone.
REFUSED = {
    "bloom": ("bloom", {}, "ALiBi"),
    "falcon_alibi": ("falcon", {"alibi": True}, "ALiBi"),
    "mpt": ("mpt", {}, "ALiBi"),
    "gpt_neo_local": ("gpt_neo", {"attention_types": [[["global", "local"], 1]], "window_size": WINDOW},
                      "local layers count their window"),
    "mamba": ("mamba", {}, "recurrent state"),
    "rwkv": ("rwkv", {}, "recurrent state"),
    "recurrent_gemma": ("recurrent_gemma", {}, "recurrent"),
    "jamba": ("jamba", {}, "linear_attention"),
    "qwen3_next": ("qwen3_next", {}, "linear_attention"),
    "lfm2_conv": ("lfm2", {"layer_types": ["conv", "full_attention"]}, "conv"),
    "falcon_h1": ("falcon_h1", {}, "hybrid"),
    "gemma3n_text": ("gemma3n_text", {}, "share KV caches"),
    "bart": ("bart", {}, "encoder-decoder"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_families_name_their_type(name):
    from transformers import AutoConfig

    model_type, over, why = REFUSED[name]
    cfg = AutoConfig.for_model(model_type, **{**BASE, **over})
    with pytest.raises(ValueError, match=f"specdec cannot run model_type '{model_type}' exactly: .*{why}"):
        families.check(cfg)
    assert "\n" not in families.unsupported(cfg)


def test_refused_models_fail_before_decoding_with_one_line():
    """Bloom once failed inside transformers with `too many values to unpack`; openai-gpt's forward takes
    no cache; BartForCausalLM counts positions in cache columns (exact at batch size 1 only)."""
    from transformers import BartConfig, BartForCausalLM

    bart = BartForCausalLM(BartConfig(vocab_size=VOCAB, d_model=32, decoder_layers=2, encoder_layers=2,
                                      decoder_attention_heads=4, encoder_attention_heads=4, decoder_ffn_dim=64,
                                      encoder_ffn_dim=64, max_position_embeddings=128)).eval()
    ids, mask = ragged()
    cases = [(build("bloom", n_head=4), "bloom", "ALiBi"), (build("falcon", alibi=True), "falcon", "ALiBi"),
             (build("openai-gpt", n_positions=128), "openai-gpt", "takes no KV cache"),
             (bart, "bart", "no position_ids")]
    for model, kind, why in cases:
        with pytest.raises(ValueError, match=f"^specdec cannot run model_type '{kind}' exactly: [^\n]*{why}"):
            autoregressive_generate(model, ids, mask, max_new_tokens=4)
        with pytest.raises(ValueError, match=f"model_type '{kind}'"):
            SpeculativeDecoder(model, model, gamma=2).generate(ids, mask, max_new_tokens=4)


def test_load_refuses_from_the_config_before_any_weights(tmp_path):
    """A folder with only a Bloom config.json: the family error comes first (no weights are read)."""
    from transformers import AutoConfig

    from specdec.models import load_model
    AutoConfig.for_model("bloom", **BASE).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="^specdec cannot run model_type 'bloom' exactly: ALiBi"):
        load_model(tmp_path)


def test_cli_refuses_with_one_line_and_exit_2(tmp_path, capsys):
    from transformers import AutoConfig

    from specdec.cli import main
    AutoConfig.for_model("mpt", **BASE).save_pretrained(tmp_path)
    assert main(["generate", "--target", str(tmp_path), "--draft", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "specdec cannot run model_type 'mpt' exactly: ALiBi" in err, err


def test_lean_forwards_refuse_windows_shorter_than_the_context():
    """The lean and NumPy forwards attend to every column: windowed models take transformers' forward
    (impl auto), and asking for lean says why not."""
    from specdec.engine import lean
    from specdec.engine.runner import resolve_impl
    for model in (build("mistral", sliding_window=WINDOW), build("qwen2", use_sliding_window=True,
                                                                   sliding_window=WINDOW, max_window_layers=1)):
        assert lean.supports(model) == f"attention window {WINDOW} shorter than the context"
        assert resolve_impl(model) == "hf"
        with pytest.raises(ValueError, match="impl='lean' does not support .*attention window 6"):
            ModelRunner(model, 1, 8, impl="lean")
    for model in (build("mistral", sliding_window=128), build("qwen2", sliding_window=WINDOW)):
        assert lean.supports(model) is None            # the window never binds / is switched off
