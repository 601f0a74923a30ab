"""The cost model's table, cache and measurement (specdec/costmodel/): what the key holds, that a stale or
foreign table is never read, the round costs gamma="auto" reads, and the decoder measuring once and
reading the cache afterwards."""
import copy
import json

import pytest
import torch

from conftest import tiny_llama
from specdec import SpeculativeDecoder
from specdec.costmodel import cache as costcache
from specdec.costmodel import measure, table
from specdec.engine.quant import quantize_model


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(seed=0), tiny_llama(seed=1, num_layers=1, hidden_size=16, heads=2, kv_heads=1)


def _key(pair, **kw):
    args = dict(batch_size=2, context=32, sampling=False, gammas=range(1, 5))
    args.update(kw)
    return costcache.cost_key(*pair, **args)


def test_key_holds_what_a_round_costs_depends_on(pair, monkeypatch):
    base = _key(pair)
    assert base == _key(pair)                                   # deterministic
    for change in (dict(batch_size=3), dict(context=64), dict(sampling=True), dict(gammas=range(1, 9)),
                   dict(impl="hf"), dict(impl=("auto", "hf")), dict(cuda_graphs=True)):
        assert _key(pair, **change) != base, change
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    assert _key(pair) != base                                   # another thread count
    monkeypatch.undo()
    assert _key((pair[1], pair[0])) != base                     # target and draft swapped
    # weights do not change a step's cost (a retrained model keeps its table); its architecture does
    retrained = tiny_llama(seed=5)
    assert _key((retrained, pair[1])) == base
    assert _key((tiny_llama(seed=0, num_layers=3), pair[1])) != base
    int8 = quantize_model(copy.deepcopy(pair[0]), "int8")
    assert _key((int8, pair[1])) != base


def test_key_changes_with_the_engine_source(pair, tmp_path):
    src = tmp_path / "loop.py"
    src.write_text("a = 1\n")
    before = _key(pair, sources=[src])
    src.write_text("a = 2\n")
    assert _key(pair, sources=[src]) != before


def test_the_engine_fingerprint_covers_every_module_a_forward_runs():
    """Every specdec module that runner.py imports (the forwards, the cache, int8) is hashed into the
    key: a change to any of them must not reuse round costs measured before it (lean_numpy once was not)."""
    import ast
    from pathlib import Path
    import specdec.engine.runner
    path = Path(specdec.engine.runner.__file__)
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            imported |= {path.parent / f"{n}.py" for n in names}
    assert imported and imported <= set(costcache.engine_sources()), imported - set(costcache.engine_sources())


def test_cache_round_trip_and_refusals(pair, tmp_path):
    cache = costcache.CostCache(tmp_path)
    key = _key(pair)
    entry = {"round_s": {"greedy": {1: 0.01, 2: 0.012}}}
    assert cache.load(key) is None
    cache.store(key, entry)
    assert cache.load(key) == entry                              # JSON's string keys come back as ints
    # a foreign file at this key's path (another pair, machine or engine, or an edited file) is not read
    path = cache.path(key)
    data = json.loads(path.read_text())
    for field, value in (("threads", 99), ("engine", "0" * 64), ("device_name", "another CPU"), ("target", "x")):
        stale = dict(data, key={**data["key"], field: value})
        path.write_text(json.dumps(stale))
        assert cache.load(key) is None, field
    path.write_text("{ not json")
    assert cache.load(key) is None
    path.write_text(json.dumps({"key": data["key"], "costs": "garbage"}))
    with pytest.warns(UserWarning, match="unusable costs"):
        assert cache.load(key) is None
    # get: measures when nothing usable is stored, then reads what it stored
    calls = []
    assert cache.get(key, lambda: calls.append(1) or entry) == entry
    assert cache.get(key, lambda: calls.append(1) or entry) == entry
    assert calls == [1]


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "a"))
    assert costcache.default_cache_dir() == tmp_path / "a" / "costs"
    monkeypatch.delenv("SPECDEC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert costcache.default_cache_dir() == tmp_path / "xdg" / "specdec" / "costs"
    # an unwritable cache costs a measurement, nothing else
    blocked = tmp_path / "file"
    blocked.write_text("")
    costcache.CostCache(blocked / "sub").store({"k": 1}, {"round_s": {}})


def test_round_costs_and_nearest_batch_size():
    entry = {"c": 0.1, "v": {1: 1.0, 2: 1.2}, "round_s": {"greedy": {1: 0.010, 2: 0.012}}}
    assert table.round_costs(entry, sampling=False) == {1: 0.010, 2: 0.012}
    assert table.round_costs(entry, sampling=True) == {1: 0.010, 2: 0.012}     # the other mode's
    assert table.round_costs({"c": 0.1, "v": {1: 1.0, 2: 1.2}}, False) == pytest.approx({1: 1.1, 2: 1.4})
    by_size = {1: "one", 4: "four", 16: "sixteen"}
    assert [table.costs_at(by_size, b) for b in (1, 2, 3, 5, 8, 12, 64)] == \
        ["one", "four", "four", "four", "four", "sixteen", "sixteen"]
    back = table.read_entry(json.loads(json.dumps(entry)))
    assert back == entry


def test_auto_measures_once_then_reads_the_cache(pair, tmp_path, monkeypatch):
    target, _ = pair
    draft = copy.deepcopy(target)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    dec = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=4, cost_cache=tmp_path)
    first = dec.generate(ids, max_new_tokens=12)
    files = list(tmp_path.glob("costs-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["key"]["gammas"] == [1, 2, 3, 4] and stored["key"]["sampling"] is False
    assert set(stored["costs"]["round_s"]["greedy"]) == {"1", "2", "3", "4"}
    # a new decoder (a new process) reads the table instead of measuring
    monkeypatch.setattr(costcache, "measure_round_costs", lambda *a, **k: pytest.fail("measured again"))
    again = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=4, cost_cache=tmp_path)
    assert again.generate(ids, max_new_tokens=12).new_tokens == first.new_tokens
    # sampling is its own key (it costs more per draft): measured apart
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        again.generate(ids, max_new_tokens=12, temperature=1.0, seed=0)


def test_measure_round_costs(pair):
    target, draft = pair
    dec = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=3)
    rc = measure.measure_round_costs(dec, torch.tensor([[3, 4, 5, 6]]).repeat(2, 1), None, sampling=True,
                                     repeats=1, new_tokens=40)
    assert set(rc) == {1, 2, 3} and all(0 < s < 5 for s in rc.values())


def test_a_first_call_that_measures_decodes_as_a_call_that_reads(pair, tmp_path):
    """Timing rounds runs decodes of its own; the call that triggered it must still decode with its own
    settings and seed (top-k, temperature): the same output as a later call that reads the cache."""
    target, draft = pair
    ids = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10]])
    mask = (ids != 0).long()
    kw = dict(max_new_tokens=10, temperature=0.8, top_k=5, seed=3)
    first = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=3, cost_cache=tmp_path).generate(ids, mask, **kw)
    assert len(list(tmp_path.glob("costs-*.json"))) == 1
    again = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=3, cost_cache=tmp_path).generate(ids, mask, **kw)
    assert first.new_tokens == again.new_tokens


# ------------------------------------------------------------------ damaged costs (issue 19, class 8)

def _cached_file(pair, tmp_path, round_s):
    """The cache file a gamma="auto" decoder of `pair` (batch 1, 7-token prompt, greedy, max_gamma 4)
    reads, written by hand with the given round times."""
    target, _ = pair
    draft = copy.deepcopy(target)
    dec = SpeculativeDecoder(target, draft, gamma="auto", max_gamma=4, cost_cache=tmp_path)
    key = costcache.cost_key(target, draft, 1, costcache.context_bucket(7), False, range(1, 5), dec.resolved_impl,
                             False, dec.device)
    path = costcache.CostCache(tmp_path).path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "costs": {"round_s": {"greedy": round_s}}}))
    return dec, path


@pytest.mark.parametrize("seconds", [0.0, -0.01])
def test_a_cache_file_of_zero_or_negative_costs_is_measured_again(pair, tmp_path, seconds):
    """A cost cache file whose round times are zero (a ZeroDivisionError inside the choice) or negative
    (auto then drafted nothing, K = 0, every round) is never used: it is measured again, with a warning
    naming the file, and replaced."""
    dec, path = _cached_file(pair, tmp_path, {str(k): seconds for k in range(1, 5)})
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    with pytest.warns(UserWarning, match=f"{path.name}.*unusable costs.*measuring them again"):
        out = dec.generate(ids, max_new_tokens=12)
    assert sum(out.stats.gamma_counts[1:]) > 0             # rounds drafted: K >= 1
    stored = json.loads(path.read_text())["costs"]["round_s"]["greedy"]
    assert set(stored) == {"1", "2", "3", "4"} and all(s > 0 for s in stored.values())


def test_a_cache_file_missing_a_count_or_a_mode_is_measured_again(pair, tmp_path):
    dec, path = _cached_file(pair, tmp_path, {})
    with pytest.warns(UserWarning, match="unusable costs"):
        dec.generate(torch.tensor([[3, 4, 5, 6, 7, 8, 9]]), max_new_tokens=6)
    assert json.loads(path.read_text())["costs"]["round_s"]["greedy"]


@pytest.mark.parametrize("entry, field", [
    ({"c": 0.0, "v": {"1": 1.1}}, "c"), ({"c": 0.1, "v": {"1": -1.0}}, "v"), ({"c": 0.1, "v": {}}, "v"),
    ({"c": 0.1, "v": {"x": 1.0}}, "integer keys"), ({"c": 0.1, "v": {"0": 1.0}}, "count 0"),
    ({"c": float("nan"), "v": {"1": 1.0}}, "c"), ({"c": True, "v": {"1": 1.0}}, "c"),
    ({"round_s": {"greedy": {"1": 0.0}}}, "round_s.greedy"), ({"round_s": {"fast": {"1": 1.0}}}, "unknown mode"),
    ({"c": 0.1}, "neither round times"), ({"target_step_s": -1.0, "c": 0.1, "v": {"1": 1.0}}, "target_step_s"),
    ("garbage", "not a costs entry"), (None, "not"),
])
def test_read_entry_refuses_costs_no_prediction_may_use(entry, field):
    with pytest.raises(ValueError, match=field):
        table.read_entry(entry)


def test_read_table_names_the_batch_size():
    good = {"c": 0.1, "v": {"1": 1.1}}
    assert table.read_table({"1": good, "8": good}) == {1: {"c": 0.1, "v": {1: 1.1}}, 8: {"c": 0.1, "v": {1: 1.1}}}
    with pytest.raises(ValueError, match="batch size 8: c = 0"):
        table.read_table({"1": good, "8": {"c": 0, "v": {"1": 1.1}}})
    with pytest.raises(ValueError, match="batch size '0' is not an integer >= 1"):
        table.read_table({"0": good})
