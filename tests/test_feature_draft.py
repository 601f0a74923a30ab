"""bench/smollm2_feature_draft.py: the feature draft's vectorised chain is the draft a round would run
(checked against a step-by-step decode over an explicit sequence), the round walk counts what greedy
speculative decoding emits, and the script runs end to end on a tiny target, its features reproducing
the target's greedy tokens."""
import json

import torch

from conftest import bench_script, tiny_llama
from specdec.distill.samples import generate, write_shard


def _draft(mod, seed=0):
    target = tiny_llama(vocab_size=96, hidden_size=32, num_layers=2, heads=4, kv_heads=2, seed=seed)
    draft = mod.FeatureDraft(target, 1, list(range(0, 96, 3)))
    with torch.no_grad():
        draft.fc.normal_(0.0, 0.3)
    return draft


def _step_by_step(draft, ids, feats, j, steps):
    """The round starting at j decoded one step at a time: the explicit sequence of inputs the draft's
    cache would hold (true ones up to j, then the chain's own), full causal attention over it."""
    xs, g, outs = [draft.inputs(ids[1:j + 2], feats[:j + 1])], None, []
    for s in range(1, steps + 1):
        if j + s >= ids.shape[0]:
            break
        if s > 1:
            xs.append(draft.inputs(ids[j + s:j + s + 1], g))
        x = torch.cat(xs)
        q, k, v = draft.qkv(x, torch.arange(x.shape[0]))
        sc = torch.einsum("ihd,jhd->hij", q, k) / draft.shape.head_dim ** 0.5
        sc = sc.masked_fill(~torch.ones(x.shape[0], x.shape[0], dtype=torch.bool).tril(), float("-inf"))
        g = draft.finish(x, torch.einsum("hij,jhd->ihd", sc.softmax(-1), v))[-1:]
        outs.append(g[0])
    return outs


def test_the_vectorised_chain_is_a_step_by_step_round(monkeypatch):
    mod = bench_script("smollm2_feature_draft", monkeypatch)
    draft = _draft(mod)
    torch.manual_seed(1)
    n = 19
    ids, feats = torch.randint(0, 96, (n,)), torch.randn(n, 32)
    with torch.no_grad():
        chain = draft.chain(ids, feats, 4)
        assert [g.shape[0] for g in chain] == [n - 1, n - 2, n - 3, n - 4]
        for j in (0, 1, 7, 14, 17):
            for s, g in enumerate(_step_by_step(draft, ids, feats, j, 4), 1):
                torch.testing.assert_close(chain[s - 1][j], g, rtol=1e-3, atol=1e-4)


def test_walk_and_leading_matches(monkeypatch):
    mod = bench_script("smollm2_feature_draft", monkeypatch)
    # every draft accepted: rounds of 5 tokens, the last cut by the row's end
    assert mod.walk([4] * 12, 0, 12, 4) == (11, 3)
    # none accepted: one token a round
    assert mod.walk([0] * 12, 2, 12, 4) == (9, 9)
    # a round at j emits a_j + 1 and the next starts after them
    acc = [2, 0, 0, 1, 0, 0, 0, 0]
    assert mod.walk(acc, 0, 8, 4) == (7, 4)     # j = 0 (3 tokens), 3 (2), 5 (1), 6 (1)
    ids = torch.tensor([5, 6, 7, 8, 9, 10])
    preds = [torch.tensor([7, 8, 0, 10, 0]), torch.tensor([8, 0, 10, 0])]   # step 1 predicts x_{j+2}, step 2 x_{j+3}
    assert mod.leading_matches(preds, ids, 0) == [2, 1, 0, 1, 0, 0]


def test_the_script_end_to_end(tmp_path, monkeypatch):
    mod = bench_script("smollm2_feature_draft", monkeypatch)
    target = tiny_llama(vocab_size=96, hidden_size=32, num_layers=2, heads=4, kv_heads=2, seed=3)
    target.save_pretrained(tmp_path / "target")
    samples = tmp_path / "samples"
    samples.mkdir()
    g = torch.Generator().manual_seed(0)
    for u in range(3):
        prompts = [torch.randint(3, 96, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(4)]
        gen = generate(target, prompts, 12, [0.0, 1.0, 0.0, 1.0], seed=u, topk=4, impl="hf")
        write_shard(samples / f"unit_{u:05d}.pt", prompts, gen, [{"temperature": t} for t in (0.0, 1.0, 0.0, 1.0)])
    feats = tmp_path / "feats"
    assert mod.main(["features", "--target", str(tmp_path / "target"), "--samples", str(samples),
                     "--out", str(feats)]) == 0
    other = tiny_llama(vocab_size=96, hidden_size=32, num_layers=2, heads=4, kv_heads=2, seed=4)
    other.save_pretrained(tmp_path / "other")
    assert mod.main(["features", "--target", str(tmp_path / "other"), "--samples", str(samples),
                     "--out", str(feats)]) == 2      # one folder, one target's features
    # the features are what the head reads: on greedy rows they reproduce every continuation token
    d = torch.load(feats / "unit_00001.pt", weights_only=False)
    head = target.lm_head.weight
    for ids, f, plen, temp in zip(d["ids"], d["feats"], d["plen"], d["temps"]):
        if temp == 0.0:
            assert torch.equal((f[plen - 1:-1].float() @ head.T).argmax(-1), ids[plen:].long())
    out = tmp_path / "run.json"
    assert mod.main(["train", "--target", str(tmp_path / "target"), "--features", str(feats), "--val",
                     "unit_00001.pt", "--head", "64", "--steps", "2", "--epochs", "2", "--batch", "2",
                     "--evals", "1", "--out", str(out), "--save", str(tmp_path / "draft.pt")]) == 0
    log = json.loads(out.read_text())
    saved = torch.load(tmp_path / "draft.pt", weights_only=True)
    assert saved["layer"] == 1 and saved["state"]["fc"].shape == (32, 64) and 0 < saved["state"]["head_ids"].numel() <= 64
    assert log["train_rows"] == 8 and len(log["evals"]) >= 2
    last = log["evals"][-1]
    assert 1.0 <= last["mal_g4"] <= 5.0 and 0.0 <= last["step1_agreement"] <= 1.0
    assert last["greedy_tokens"] > 0 and last["t1_tokens"] > 0
    # --init continues from the saved draft: its first evaluation is the saved draft's last
    again = tmp_path / "again.json"
    assert mod.main(["train", "--target", str(tmp_path / "target"), "--features", str(feats), "--val",
                     "unit_00001.pt", "--steps", "2", "--epochs", "1", "--batch", "2", "--evals", "1",
                     "--init", str(tmp_path / "draft.pt"), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["evals"][0] == {**last, "step": 0, "s": json.loads(again.read_text())["evals"][0]["s"]}
    # export: the saved draft as a folder the engine loads and runs; greedy output is the target's own
    from specdec import SpeculativeDecoder, autoregressive_generate
    from specdec.engine import features as feature_drafts
    from specdec.models import load_model
    tok = tmp_path / "target"   # the tiny target has no tokenizer: export copies the target's, so give it one
    _tiny_tokenizer(tok)
    assert mod.main(["export", "--target", str(tok), "--draft", str(tmp_path / "draft.pt"),
                     "--out", str(tmp_path / "exported")]) == 0
    assert mod.main(["export", "--target", str(tok), "--draft", str(tmp_path / "draft.pt"),
                     "--out", str(tmp_path / "exported")]) == 2      # never over another folder
    draft = load_model(tmp_path / "exported")
    assert feature_drafts.is_feature_draft(draft) and draft.config.num_hidden_layers == 1
    prompt = torch.tensor([[5, 9, 33, 70]])
    sd = SpeculativeDecoder(target, draft, gamma=2).generate(prompt, max_new_tokens=16)
    assert sd.new_tokens == autoregressive_generate(target, prompt, max_new_tokens=16).new_tokens


def _tiny_tokenizer(folder):
    """A word-level tokenizer of 96 ids saved into `folder` (what load_tokenizer reads)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(96)}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")),
                                   unk_token="w0")
    fast.save_pretrained(folder)
