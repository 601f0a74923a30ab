"""A draft built from its target alone: shape, initialisation, head ids; packing it small and
materialising the full Hugging Face folder from the target again.

A target like SmolLM2-135M has no smaller model that shares its tokenizer, so its draft is made here:
  * the input embedding is the target's (width d = the target's) or its projection onto the top-d
    principal directions of the target's embedding (d smaller): a lookup costs nothing per step, so the
    draft keeps every id as input, and the embedding is never trained (`EMBED_KEY` in the config says
    so): the packed draft ships without it and gets it back from the target (`materialize`);
  * the output head covers only the ids the target emits (engine/headmap.py), its rows initialised
    from the target's tied embedding (projected like the input side when d is smaller);
  * the layers are either copies of some of the target's layers (d equal to the target's) or fresh.

Packed form (what the package ships, `pack`): `draft.safetensors` with the draft's own tensors in
float16 (layers, final norm, the head's covered rows as `head.rows`, and for a projected draft the
projection [D, d] as `embed.projection`) and `config.json` (the Hugging Face config, with the head ids).
`materialize` rebuilds the loadable folder: config, float32 weights (embedding = the target's, times
the projection; head = zeros outside the covered rows), and the target's tokenizer files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common.cachedir import cache_root
from ..common.files import write_json_atomic
from ..engine.headmap import CONFIG_KEY, check_ids

EMBED_KEY = "specdec_embedding"          # config: {"from": "target", "projected": bool}
PACKED_WEIGHTS = "draft.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


@dataclass
class DraftShape:
    """hidden None = the target's; target_layers: copy these target layers (hidden must be the
    target's), else `layers` fresh ones."""
    head_ids: list
    hidden: int | None = None
    layers: int = 1
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    target_layers: list = field(default_factory=list)
    seed: int = 0


def embedding_projection(embed: torch.Tensor, d: int) -> torch.Tensor:
    """[V, D] -> [D, d]: the top-d principal directions (uncentred) of the embedding rows, each signed
    so that its largest component is positive (a deterministic choice of the eigenvectors' signs)."""
    e = embed.double()
    vals, vecs = torch.linalg.eigh(e.T @ e)                                       # ascending
    top = vecs[:, vals.argsort(descending=True)[:d]]                              # [D, d]
    sign = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return (top * sign).float()


def draft_config(target_cfg, shape: DraftShape):
    """The draft's LlamaConfig: the target's, with the draft's width and depth."""
    from transformers import LlamaConfig

    D = target_cfg.hidden_size
    d = shape.hidden or D
    if shape.target_layers and d != D:
        raise ValueError(f"copying target layers needs the target's width {D}, not {d}")
    heads = shape.heads or (target_cfg.num_attention_heads if d == D else max(1, d // 64))
    kv = shape.kv_heads or (target_cfg.num_key_value_heads if d == D else heads)
    cfg = target_cfg.to_dict()
    for k in ("_name_or_path", "_model_name_or_path", "quantization_config", "architectures", "transformers_version"):
        cfg.pop(k, None)
    cfg.update(hidden_size=d, num_hidden_layers=len(shape.target_layers) or shape.layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=d // heads,
               intermediate_size=shape.intermediate or (target_cfg.intermediate_size * d // D),
               tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    cfg[CONFIG_KEY] = [int(i) for i in shape.head_ids]
    cfg[EMBED_KEY] = {"from": "target", "projected": d != D}
    return LlamaConfig(**cfg)


@torch.no_grad()
def build(target, shape: DraftShape):
    """The draft model (float32) for a loaded target (Llama family)."""
    from transformers import LlamaForCausalLM

    V = target.get_input_embeddings().weight.shape[0]
    ids = check_ids(shape.head_ids, V)
    cfg = draft_config(target.config, shape)
    torch.manual_seed(shape.seed)
    draft = LlamaForCausalLM(cfg).float().eval()
    E = target.get_input_embeddings().weight.detach().float()                      # [V, D]
    proj = None if cfg.hidden_size == E.shape[1] else embedding_projection(E, cfg.hidden_size)
    E_d = E if proj is None else E @ proj                                          # [V, d]
    draft.model.embed_tokens.weight.copy_(E_d)
    head = target.get_output_embeddings().weight.detach().float()                  # [V, D]
    rows = head[ids] if proj is None else head[ids] @ proj                         # [K, d]
    draft.lm_head.weight.zero_()
    draft.lm_head.weight[ids] = rows
    if proj is None:
        draft.model.norm.weight.copy_(target.model.norm.weight)
    for dst, i in zip(draft.model.layers, shape.target_layers):
        dst.load_state_dict(target.model.layers[i].state_dict())
    return draft


def recover_projection(draft, target_embed: torch.Tensor) -> torch.Tensor | None:
    """The draft's embedding projection [D, d] (None when it has the target's width), recovered from its
    frozen embedding E_d = E P by least squares (exact up to float rounding: E has full column rank)."""
    E_d = draft.get_input_embeddings().weight.detach().double()
    E = target_embed.detach().double()
    if E_d.shape[1] == E.shape[1]:
        return None
    return torch.linalg.lstsq(E, E_d).solution.float()


def own_tensors(draft, proj: torch.Tensor | None) -> dict:
    """The tensors a packed draft ships: everything but the embedding, the head cut to its rows."""
    ids = torch.as_tensor(draft.config.to_dict()[CONFIG_KEY])
    out = {k: v.detach().half().contiguous() for k, v in draft.state_dict().items()
           if k not in ("model.embed_tokens.weight", "lm_head.weight")}
    out["head.rows"] = draft.lm_head.weight.detach()[ids].half().contiguous()
    if proj is not None:
        out["embed.projection"] = proj.contiguous()   # float32: the embedding it rebuilds is the trained one
    return out


def pack(draft, target_embed: torch.Tensor, out) -> Path:
    """Write the packed draft (config.json + draft.safetensors) into folder `out`. target_embed: the
    target's input embedding [V, D] (the draft's own, or its projection, is not shipped)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(own_tensors(draft, recover_projection(draft, target_embed)), str(out / PACKED_WEIGHTS))
    write_json_atomic(out / "config.json", draft.config.to_dict(), indent=1)
    return out


def is_packed(folder) -> bool:
    return (Path(folder) / PACKED_WEIGHTS).is_file() and not (Path(folder) / "model.safetensors").is_file()


def target_embedding(target_dir) -> torch.Tensor:
    """The target's input embedding [V, D] (float32) read from its folder's model.safetensors."""
    from safetensors import safe_open

    path = Path(target_dir) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"a packed draft is completed from its target's embedding, but {target_dir} has no "
                         "model.safetensors")
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("model.embed_tokens.weight").float()


def packed_key(packed, embed: torch.Tensor) -> str:
    """Identity of a materialised folder: the packed files' contents and the target embedding's."""
    h = hashlib.sha256()
    for p in (Path(packed) / "config.json", Path(packed) / PACKED_WEIGHTS):
        h.update(p.read_bytes())
    h.update(embed.numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_packed(draft, target_dir) -> Path:
    """A draft folder ready to load: `draft` itself, or, for a packed draft, its materialised folder in
    the cache (built on first use, keyed by the packed files and the target's embedding)."""
    if not is_packed(draft):
        return Path(draft)
    embed = target_embedding(target_dir)
    out = cache_root() / "drafts" / packed_key(draft, embed)
    if not (out / "model.safetensors").is_file():
        materialize(draft, target_dir, out, embed)
    return out


@torch.no_grad()
def materialize(packed, target_dir, out, embed: torch.Tensor | None = None) -> Path:
    """The loadable Hugging Face folder of a packed draft in `out` (written whole, then renamed)."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    packed, target_dir, out = Path(packed), Path(target_dir), Path(out)
    cfg = LlamaConfig(**json.loads((packed / "config.json").read_text(encoding="utf-8")))
    own = load_file(str(packed / PACKED_WEIGHTS))
    E = target_embedding(target_dir) if embed is None else embed                  # [V, D]
    proj = own.pop("embed.projection", None)
    ids = check_ids(cfg.to_dict()[CONFIG_KEY], E.shape[0])
    draft = LlamaForCausalLM(cfg).float()
    state = {k: v.float() for k, v in own.items() if k != "head.rows"}
    state["model.embed_tokens.weight"] = E if proj is None else E @ proj.float()
    head = torch.zeros((E.shape[0], cfg.hidden_size))
    head[ids] = own["head.rows"].float()
    state["lm_head.weight"] = head
    draft.load_state_dict(state, strict=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in draft.state_dict().items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    write_json_atomic(tmp / "config.json", cfg.to_dict(), indent=1)
    for name in TOKENIZER_FILES:
        if (target_dir / name).is_file():
            shutil.copy2(target_dir / name, tmp / name)
    if (out / "model.safetensors").is_file():   # another process finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
