"""Speed-up for Triton's CPU interpreter (TRITON_INTERPRET=1); has no effect on compiled kernels.

The interpreter re-patches triton.language on every call of a jitted device function, and tl.max,
tl.sum, tl.cumsum... are jitted functions: each reduction costs ~3 ms of `inspect.getmembers`, which
made one verification row ~80 ms. When every language module the callee sees is already patched
(the enclosing kernel's launch patched them), the re-patch is a no-op and is skipped here. Anything
unexpected in triton's internals leaves the interpreter untouched.
"""
from __future__ import annotations

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    try:
        import triton.language as tl
        import triton.runtime.interpreter as interp
        orig = interp._patch_lang
        scope_cls = interp._LangPatchScope
        is_builtin = tl.core.is_builtin
    except Exception:  # a triton whose interpreter differs: keep its behaviour
        return

    def _patch_lang(fn):
        langs = [v for v in fn.__globals__.values() if v is tl or v is tl.core]
        probes = [getattr(lang, "load", None) for lang in langs] + [getattr(tl.core.tensor, "__add__", None)]
        if langs and all(p is not None and not is_builtin(p) for p in probes):
            return scope_cls()  # already patched by the enclosing launch; restoring it is a no-op
        return orig(fn)

    interp._patch_lang = _patch_lang
