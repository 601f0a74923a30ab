"""A draft that reads the target's features (EAGLE-1, Li et al. 2024): what it is and how it is stored.

Why: an independent draft for SmolLM2-135M must learn the target's next-token distribution from the
tokens alone, and a small one agrees with it ~1 step in 3 (bench/RESULTS.md). The target's own last
hidden state says most of what its next tokens will be; a draft of one decoder layer that reads it
agrees about half the time at the first step for the cost of one layer and a cut head
(bench/smollm2_feature_draft.py trains it; bench/RESULTS.md, "The feature draft ...").

The model. At position j the draft reads f_j, the target's feature there (its final-normed hidden state,
what its head reads), and the next token x_{j+1}; its input is fc([embed(x_{j+1}), f_j]). A round that
starts with the target's pending token x_t (made from f_{t-1}) feeds (f_{t-1}, x_t) at position t-1 and
proposes d_1 from the draft's own final-normed state g_1; step k > 1 feeds (g_{k-1}, d_{k-1}) at position
t+k-2. After verification the draft forgets those chain columns and reads the true features of what was
accepted, (f_t, x_{t+1}) .. (f_{t+a}, x_{t+a+1}), at the start of the next round (engine/decoding.py,
_FeatureCall).

Representation: an ordinary Hugging Face Llama-family model (its own decoder layers, final norm and head,
which may cover only some ids: engine/headmap.py) whose input embedding already holds the token's part of
fc (E' = E W_e^T, folded once: no per-step cost), plus the feature's part W_f [d, d] kept beside the model
(`proj_of`; x_j = E'[x_{j+1}] + f_j W_f^T). The config carries CONFIG_KEY, and `save` writes W_f to
PROJ_FILE in the model's folder, which models.load_model reads back, so the draft loads as any other.
Lossless whatever it proposes: the draft's q is still the distribution its tokens were drawn from, and the
target's features are a fixed function of the committed tokens.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from . import qkernels, qweights
from .headmap import CONFIG_KEY as HEAD_IDS_KEY
from .qformats import QUANTIZERS

CONFIG_KEY = "specdec_feature_draft"
PROJ_FILE = "feature_proj.safetensors"
_ATTR = "_specdec_feature_proj"
_QATTR = "_specdec_feature_qproj"      # W_f on q8_0 blocks, for a draft on the C kernels (projector)


def is_feature_draft(model) -> bool:
    return getattr(getattr(model, "config", None), CONFIG_KEY, None) is not None


def proj_of(model) -> torch.Tensor:
    """W_f [d, d_target] of a feature draft (the feature's part of its input)."""
    proj = getattr(model, _ATTR, None)
    if proj is None:
        raise ValueError("this feature draft has no feature projection attached: load its folder with "
                         f"specdec.models.load_model (it reads {PROJ_FILE}) or call engine.features.attach")
    return proj


def attach(model, proj: torch.Tensor) -> None:
    """Make `model` a feature draft whose input adds f W_f^T (proj = W_f [d, d_target], float32)."""
    d = model.get_input_embeddings().weight.shape[1]
    proj = torch.as_tensor(proj).detach().float().contiguous()
    if proj.dim() != 2 or proj.shape[0] != d:
        raise ValueError(f"a feature projection must be [{d}, target hidden], got {tuple(proj.shape)}")
    object.__setattr__(model, _ATTR, proj)   # not a submodule: kept out of the HF state_dict
    setattr(model.config, CONFIG_KEY, {"target_hidden": int(proj.shape[1])})


def projector(model):
    """f [..., d_target] -> f W_f^T [..., d] for this draft's W_f. A draft on the C kernels (quantize q8_0 /
    ...-q8a) multiplies by W_f rounded to q8_0 blocks on the same kernels (0.35 MB read a step instead of
    1.3 MB: in a round the draft's bytes come from memory, and displace as many of the target's from the
    cache; lossless whatever W_f is, the draft's q being what it proposed from). Else on the CPU one NumPy
    matmul on a contiguous W_f^T (torch's matmul through a transposed view cost ~0.1 ms more a step)."""
    proj = proj_of(model)
    wt = proj.T.contiguous()
    if wt.device.type != "cpu":
        return lambda f: f.to(wt.dtype) @ wt
    qw = qweights.current_weights(model)
    if qw is not None and qkernels.available() is None:
        key = (proj.data_ptr(), proj._version, qw.act)
        cached = getattr(model, _QATTR, None)
        if cached is None or cached[0] != key:
            blocks = QUANTIZERS["q8_0"](np.ascontiguousarray(proj.numpy()))              # [d, d_t / 32 * 34]
            w = qkernels.QMatrix("q8_0", blocks, proj.shape[1])
            cached = (key, qkernels.pack_q8a(w) if qw.act == "q8" else w)
            object.__setattr__(model, _QATTR, cached)
        w, act = cached[1], qw.act

        def project(f):
            x = np.ascontiguousarray(f.detach().float().numpy().reshape(-1, f.shape[-1]))
            return torch.from_numpy(qkernels.matmul(x, w, act=act)).view(*f.shape[:-1], w.N)
        return project
    w = wt.numpy()
    return lambda f: torch.from_numpy(f.detach().float().numpy() @ w)


def check_pair(target, draft) -> None:
    """A feature draft reads the target's features: their widths must match."""
    want = getattr(draft.config, CONFIG_KEY)["target_hidden"]
    have = target.get_input_embeddings().weight.shape[1]
    if want != have:
        raise ValueError(f"this feature draft reads features of width {want}, the target's are {have}: "
                         "it was trained for another target")
    proj_of(draft)


def build(target, layers: list[dict], embed_proj: torch.Tensor, feat_proj: torch.Tensor, norm: torch.Tensor,
          head_ids=None, head: torch.Tensor | None = None):
    """A feature draft shaped like `target` (its config, RoPE, vocabulary) with len(layers) decoder layers.
    layers: per layer its weights under the HF Llama names inside a layer ("self_attn.q_proj.weight",
    "input_layernorm.weight", ...); fc = [embed_proj | feat_proj] ([d, d] each); norm [d] the final norm;
    head_ids: the ids its head covers (None: all) and head [len(head_ids), d] their rows (default: the
    target's head rows)."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    config.tie_word_embeddings = False
    for key in ("layer_types",):   # per-layer lists follow the layer count
        if getattr(config, key, None) is not None:
            setattr(config, key, list(getattr(config, key))[:len(layers)])
    for key in (HEAD_IDS_KEY, CONFIG_KEY, "specdec_quantize", "specdec_gguf"):   # the target's, not the draft's
        if hasattr(config, key):
            delattr(config, key)
    draft = type(target)(config).eval()
    state = {}
    for i, layer in enumerate(layers):
        state.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    emb = target.get_input_embeddings().weight.detach().float()
    state["model.embed_tokens.weight"] = emb @ embed_proj.detach().float().T
    state["model.norm.weight"] = norm
    full = target.get_output_embeddings().weight.detach().float().clone()
    if head_ids is not None:
        ids = torch.as_tensor(sorted(head_ids), dtype=torch.long)
        if head is not None:
            full[ids] = head.detach().float()
        setattr(config, HEAD_IDS_KEY, ids.tolist())
    state["lm_head.weight"] = full
    missing, unexpected = draft.load_state_dict({k: torch.as_tensor(v).float() for k, v in state.items()},
                                                strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"feature draft weights do not fit the target's layer: missing {missing}, "
                         f"unexpected {unexpected}")
    attach(draft, feat_proj)
    return draft.requires_grad_(False)


def save(model, folder) -> None:
    """save_pretrained plus the feature projection (PROJ_FILE) beside it."""
    from safetensors.torch import save_file
    folder = Path(folder)
    model.save_pretrained(folder)
    tmp = folder / (PROJ_FILE + ".tmp")
    save_file({"proj": proj_of(model).contiguous()}, str(tmp))
    tmp.replace(folder / PROJ_FILE)


def load_proj(model, folder) -> None:
    """Attach PROJ_FILE from `folder` to a model whose config marks it a feature draft (load_model's hook)."""
    if not is_feature_draft(model):
        return
    path = Path(folder) / PROJ_FILE
    if not path.is_file():
        raise ValueError(f"{folder} holds a feature draft but no {PROJ_FILE}: copy the whole folder again")
    from safetensors.torch import load_file
    attach(model, load_file(str(path))["proj"])
