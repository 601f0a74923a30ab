"""CUDA graphs of the lean decode forward: the draft's one-token step and the target's verify.

A decode step of a 0.5B draft is ~25 kernels per layer: a few microseconds of GPU work each, but each
also costs a launch from the host, so an eager step is bound by the CPU, not the GPU. A captured graph
replays every kernel of the forward with one launch.

What is captured: `ModelRunner.eager` at one (live batch B, new tokens S, logits kept) over the static
KVCache (all `capacity` columns attended, the mask hides unused ones, K/V written with index_copy_ at a
device tensor of columns). Inputs are copied into static tensors before each replay; the output is
cloned after it (the engine keeps draft logits across steps, and the next replay would overwrite the
static output). Prefill stays eager (one call per decode, its length varies). Graphs are captured
lazily, the first time a shape is met (a few ms each, after two warm-up runs on a side stream), and
share one memory pool. Nothing here syncs with the host.

Needs: CUDA, the lean forward, and a cache in static mode (`ModelRunner(..., cuda_graphs=True)`).
"""
from __future__ import annotations

import torch

# Graphs are captured for short forwards only: the draft step (S = 1, or 2 after a full acceptance)
# and the verify (S = gamma + 1). Longer forwards (prefill) run eagerly.
MAX_GRAPH_TOKENS = 17


class _Graph:
    def __init__(self, runner, B: int, S: int, keep: int, pool):
        kv = runner.kv
        dev = kv.valid.device
        self.ids = torch.zeros((B, S), dtype=torch.long, device=dev)
        self.pos = torch.zeros((B, S), dtype=torch.long, device=dev)
        self.mask = torch.zeros((B, 1, S, kv.capacity), dtype=kv.dtype, device=dev)
        # Warm-up and capture write K/V at the last S columns: beyond `length`, never read unmasked.
        self.index = torch.arange(kv.capacity - S, kv.capacity, device=dev)
        saved = kv.write_index
        kv.write_index = self.index
        try:
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):
                    runner.eager(self.ids, self.pos, self.mask, keep)
            torch.cuda.current_stream(dev).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = runner.eager(self.ids, self.pos, self.mask, keep)
        finally:
            kv.write_index = saved

    def __call__(self, ids, pos, mask, write_index):
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.mask.copy_(mask)
        self.index.copy_(write_index)
        self.graph.replay()
        return self.out.clone()


class GraphSet:
    """The captured graphs of one ModelRunner, by (live batch, tokens, logits kept)."""

    def __init__(self, runner):
        self.runner = runner
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def eligible(self, S: int) -> bool:
        return S <= MAX_GRAPH_TOKENS

    def run(self, ids, pos, mask, keep: int):
        kv = self.runner.kv
        key = (kv.batch, ids.shape[1], keep)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = _Graph(self.runner, *key, self.pool)
        return g(ids, pos, mask, kv.write_index)
