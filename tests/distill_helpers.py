"""Shared by the distillation tests: a tiny target / draft pair saved with the bundled tokenizer, and
helpers to build configs and compare trained weights."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import tiny_llama
from specdec.distill import DistillConfig
from specdec.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "specdec" / "assets" / "draft"


def save_pair(root: Path) -> dict:
    """A tiny target and draft saved with the bundled tokenizer (4096 ids) under root, plus a JSONL data
    file (prompts with completions). Returns their paths: target, draft, data."""
    tok = load_tokenizer(TOKENIZER)
    V = len(tok)
    dirs = {}
    for name, kw in (("target", dict(seed=0, num_layers=2, hidden_size=32)),
                     ("draft", dict(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1))):
        m = tiny_llama(vocab_size=V, **kw)
        m.config.bos_token_id = m.config.eos_token_id = tok.eos_token_id
        m.config.pad_token_id = tok.pad_token_id
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = str(root / name)
    src = (ROOT / "specdec" / "engine" / "decoding.py").read_text().splitlines()
    lines = [json.dumps({"prompt": "\n".join(src[i:i + 6]), "completion": "\n".join(src[i + 6:i + 12])})
             for i in range(0, 240, 12)]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    dirs["data"] = str(root / "data.jsonl")
    return dirs


def make_cfg(pair_dirs, out, **kw):
    base = dict(out=str(out), target=pair_dirs["target"], draft=pair_dirs["draft"], data=pair_dirs["data"],
                data_source="dataset", prompt_tokens=12, new_tokens=6, batch_size=4, steps=4, lr=1e-2,
                warmup_steps=0, eval_every=0, spec_eval_every=0, eval_prompts=4, save_every=0, progress=False)
    base.update(kw)
    return DistillConfig(**base)


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def flip_tensor_byte(path) -> None:
    """Damage a torch.save file the way a bad disk or copy does: one byte in the middle of its largest
    tensor record flipped, the size unchanged (the file still loads)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(Path(path).read_bytes())
    head = info.header_offset   # local file header: 30 bytes, the name, the extra field, then the data
    start = head + 30 + int.from_bytes(raw[head + 26:head + 28], "little") + int.from_bytes(raw[head + 28:head + 30],
                                                                                            "little")
    raw[start + info.file_size // 2] ^= 0x55
    Path(path).write_bytes(bytes(raw))
