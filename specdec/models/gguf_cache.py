"""A GGUF file as a model folder that loads in seconds: converted once, cached by the file's content.

transformers reads GGUF files itself (`from_pretrained(folder, gguf_file=name)`, which needs the `gguf`
and `accelerate` packages), but slowly: it dequantizes every tensor and rebuilds the tokenizer from the
file's vocabulary on every load (bench/RESULTS.md has the times). specdec converts a file once into

    <cache root>/gguf/<sha256 of the file>/     (cache root: specdec.common.cachedir.cache_root())
        model.safetensors      float32, the tensors as transformers dequantized them (a tied lm_head is
                               left out: transformers ties it back on load)
        config.json            transformers' config, plus `specdec_gguf: {path, sha256}`: the file, so that
                               load_model(folder, quantize="gguf") runs its own Q4_1 / Q8_0 blocks on the C
                               kernels (engine/qweights.py reads it; a .gguf path given to load_model wins)
        generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja
        source.json            written last: what the folder was made from and holds (RECORD below)

and every later load reads that folder (`load_model` / `load_tokenizer` map a `.gguf` path to it).

Key. The file's sha256, not its path or date: a changed file is a new key (converted again), and a
copied or moved file finds its old conversion. Hashing costs ~0.3 s per 100 MB, once per process and
file (memoised by path, size and modification time).

Safety. A conversion is built in a temporary folder beside the entry and renamed into place, so a
reader sees a whole entry or none. Two processes converting the same file at once take an exclusive
lock (`<sha>.lock`, fcntl.flock; where there is no fcntl, both convert and the second rename loses):
one converts, the other waits and then reads its result. An entry is checked on every use: source.json
must parse, have this SCHEMA and key, and every file it lists must be there with the size it records;
an entry that fails (a crash while deleting, a truncated copy, an older layout) is moved aside and
converted again.

RECORD (source.json), for people and for code that reads the GGUF's own blocks (a quantized kernel):
  schema, source {path, name, size, sha256}, converted {date, seconds, transformers, gguf, torch},
  architecture, files {name: bytes},
  tensors {HF state-dict name: {gguf: the GGUF tensor's name, type: its ggml type (Q4_1, Q8_0, F32...),
           shape: its GGUF dims (fastest-varying first: [in, out] for a projection), tied: True for an
           lm_head read from token_embd, transform: null or "llama_qk_unpermute"}}
  "llama_qk_unpermute": llama.cpp's converter reorders the rows of attn_q / attn_k for its RoPE layout;
  transformers undoes it (`unpermute_qk` below): HF rows = GGUF rows regrouped per head.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..common.cachedir import cache_root
from ..common.fingerprint import file_sha256
from ..common.files import write_json_atomic

SCHEMA = 2   # 2: config.json records specdec_gguf (entries of schema 1 are converted again)
RECORD = "source.json"
MAGIC = b"GGUF"
# What reading a GGUF needs beyond specdec's own dependencies (transformers refuses without accelerate).
PACKAGES = ("gguf", "accelerate")
QK_TRANSFORM = "llama_qk_unpermute"


def is_gguf_path(name_or_path) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


def default_dir() -> Path:
    return cache_root() / "gguf"


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if importlib.util.find_spec(p) is None]


def install_hint(missing) -> str:
    return f"pip install {' '.join(missing)}  (or pip install -e \".[gguf]\" in a specdec checkout)"


def check_packages() -> None:
    missing = missing_packages()
    if missing:
        raise ValueError(f"reading a GGUF file needs the {' and '.join(missing)} package"
                         f"{'s' if len(missing) > 1 else ''}: {install_hint(missing)}")


def check_file(path) -> Path:
    """The GGUF file as an absolute path, or one line saying what is wrong with it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"GGUF path {str(path)!r} is not a file")
    with open(p, "rb") as f:
        if f.read(4) != MAGIC:
            raise ValueError(f"{str(path)!r} is not a GGUF file (it does not start with {MAGIC!r})")
    return p.resolve()


def entry_problem(folder: Path, sha: str) -> str | None:
    """Why `folder` is not a complete conversion of the file with this sha256 (None: it is)."""
    if not folder.is_dir():
        return "not converted yet"
    try:
        rec = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{RECORD} is missing or unreadable"
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        return f"another layout (schema {rec.get('schema') if isinstance(rec, dict) else None}, this specdec: {SCHEMA})"
    if (rec.get("source") or {}).get("sha256") != sha:
        return "it records another file's hash"
    files = rec.get("files")
    if not isinstance(files, dict) or not files:
        return f"{RECORD} lists no files"
    for name, size in files.items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or not the size recorded"
    return None


def read_record(folder) -> dict:
    return json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))


def converted_folder(path, cache_dir=None, log=None) -> Path:
    """The cache folder holding the conversion of the GGUF file at `path`, converting it first (once)
    if no complete one is there. log(text): status lines (default: stderr)."""
    log = log or _stderr
    src = check_file(path)
    sha = file_sha256(src)
    root = Path(cache_dir) if cache_dir is not None else default_dir()
    folder = root / sha
    if entry_problem(folder, sha) is None:
        return folder
    check_packages()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{sha}.lock", log):
        problem = entry_problem(folder, sha)
        if problem is None:  # another process converted it while this one waited
            return folder
        for stale in root.glob(f".{sha}.*"):  # left by a converter that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            log(f"cached conversion {folder} is incomplete ({problem}): converting again")
            _discard(folder)
        log(f"converting {src.name} once into {folder} (later loads read it in seconds)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=root))
        try:
            convert_into(src, tmp, sha)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, folder)
        except OSError:  # without a lock, another process may have renamed a complete entry first
            shutil.rmtree(tmp, ignore_errors=True)
            if entry_problem(folder, sha) is not None:
                raise
    return folder


def source_gguf(name_or_path) -> Path | None:
    """The GGUF file a model comes from: the path itself, or the file a converted folder records (when it
    is still there); None for anything else."""
    p = Path(str(name_or_path)).expanduser()
    if is_gguf_path(p):
        return p.resolve() if p.is_file() else None
    try:
        src = Path(read_record(p)["source"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return src if src.is_file() else None


def source_record(name_or_path) -> dict | None:
    """The conversion record (without its tensor table) of a model given as a GGUF file (converted
    first if need be) or as a converted folder; None for anything else."""
    p = Path(str(name_or_path)).expanduser()
    try:
        rec = read_record(converted_folder(p) if is_gguf_path(p) else p)
    except (OSError, ValueError):
        return None
    return {k: v for k, v in rec.items() if k != "tensors"} if isinstance(rec, dict) else None


def convert_into(src: Path, folder: Path, sha: str) -> None:
    """Load the GGUF through transformers and write the model folder + RECORD (last) into `folder`."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gguf

    t0 = time.perf_counter()
    where, name = str(src.parent), src.name
    reader = gguf.GGUFReader(str(src))
    tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
    for attr, token in special_tokens(reader).items():
        if getattr(tok, attr) != token:   # transformers 5.17 reads the GPT-2-style EOS as the BOS token
            setattr(tok, attr, token)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.specdec_gguf = {"path": str(src), "sha256": sha}   # what quantize="gguf" reads (qweights.py)
    model.config.save_pretrained(folder)
    _drop_quantization_config(folder / "config.json")
    model.generation_config.save_pretrained(folder)
    tok.save_pretrained(folder)
    tensors = tensor_map(reader, list(model.state_dict()), model.config)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    record = {"schema": SCHEMA,
              "source": {"path": str(src), "name": src.name, "size": src.stat().st_size, "sha256": sha},
              "converted": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "seconds": round(time.perf_counter() - t0, 2), "transformers": transformers.__version__,
                            "gguf": _version("gguf"), "torch": torch.__version__},
              "architecture": model.config.model_type, "files": files, "tensors": tensors}
    write_json_atomic(folder / RECORD, record)


def _drop_quantization_config(path: Path) -> None:
    """The loaded config says "quantized with gguf": the folder holds plain floats, so that entry would make
    transformers look for a GGUF file again."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    write_json_atomic(path, cfg, indent=2)


def special_tokens(reader) -> dict:
    """The tokenizer's special tokens as the GGUF's metadata names them: {"bos_token": "<|im_start|>", ...}."""
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    out = {}
    for attr, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        if field is not None and tokens is not None:
            out[attr] = tokens.contents(int(field.contents()))
    return out


def tensor_map(reader, hf_names: list, config) -> dict:
    """HF state-dict name -> the GGUF tensor it was read from (name, ggml type, GGUF dims, transform).
    reader: a gguf.GGUFReader of the file."""
    import gguf

    in_file = {t.name: t for t in reader.tensors}
    arch = reader.fields["general.architecture"].contents()
    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers) if arch_id is not None else None
    out = {}
    for hf in hf_names:
        stem, dot, suffix = hf.rpartition(".")
        g = names.get_name(stem) if names is not None else None
        entry = {"gguf": None, "type": None, "shape": None, "tied": False, "transform": None}
        if g is not None and f"{g}.{suffix}" not in in_file and g == "output":
            g, entry["tied"] = "token_embd", True   # no output.weight: the head is the embedding
        t = in_file.get(f"{g}.{suffix}") if g is not None else None
        if t is not None:
            entry.update(gguf=t.name, type=t.tensor_type.name, shape=[int(d) for d in t.shape])
            if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
                entry["transform"] = QK_TRANSFORM
        out[hf] = entry
    return out


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a GGUF attn_q / attn_k matrix in HF order ("llama_qk_unpermute"; what transformers does).
    w: [rows, in] with rows = n_head * head_dim (n_head: the KV heads for attn_k). llama.cpp stores each
    head's rows as (dim/2 pairs) x 2 interleaved; HF keeps the two halves of the head apart."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@contextlib.contextmanager
def _locked(path: Path, log):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename still keeps entries whole
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another specdec process converting the same file ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _discard(folder: Path) -> None:
    """Move a bad entry aside first, so that no reader ever sees it half deleted."""
    trash = folder.with_name(f".{folder.name}.trash-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _stderr(text: str) -> None:
    print(f"specdec: {text}", file=sys.stderr, flush=True)
