"""One validator per value and the shared config blocks: every command takes a shared flag with the same
definition and check, and the values' rules (greedy, the smallest sampling temperature, gamma's bounds,
seeds, token ids) are decided in one place."""
import argparse
import dataclasses
import typing

import pytest

from specdec.benchmark.config import BenchConfig
from specdec.cli.demo import DemoConfig
from specdec.cli.generate import GenerateConfig
from specdec.common import values
from specdec.common.config import add_arguments
from specdec.distill.cache import CacheConfig
from specdec.distill.config import DistillConfig

CONFIGS = {"bench": BenchConfig, "generate": GenerateConfig, "demo": DemoConfig, "distill": DistillConfig,
           "cache-teacher": CacheConfig}


def _help(cls) -> dict:
    """flag -> its help line, as `--help` shows it."""
    p = argparse.ArgumentParser()
    add_arguments(p, cls)
    return {a.option_strings[0]: a.help for a in p._actions if a.option_strings}


def test_a_shared_flag_has_one_definition():
    helps = {name: _help(cls) for name, cls in CONFIGS.items()}
    for flag in ("--target", "--device", "--draft", "--overwrite", "--resume", "--no-progress", "--dtype",
                 "--quantize", "--impl"):
        texts = {h[flag].split(" (default:")[0] for h in helps.values() if flag in h}
        assert len(texts) == 1, (flag, texts)
    assert "--threads" in helps["cache-teacher"] and "--draft" not in helps["cache-teacher"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_command_checks_the_shared_blocks_alike(name, tmp_path):
    cls = CONFIGS[name]
    base = {} if name in ("bench", "generate") else {"out": str(tmp_path)}
    with pytest.raises(ValueError, match="^--threads must be >= 1, got 0$"):
        cls(**base, threads=0)
    if "resume" in {f.name for f in dataclasses.fields(cls)}:
        with pytest.raises(ValueError, match="--overwrite and --resume exclude each other"):
            cls(**base, overwrite=True, resume=True)


def test_annotations_hold_after_post_init():
    """BenchConfig.gamma was annotated tuple[str, ...] while it held ints and 'auto'."""
    cfg = BenchConfig(gamma="1, 2,auto", temperature="0,1", batch_size="1,2")
    hints = typing.get_type_hints(BenchConfig)
    assert hints["gamma"] == tuple[int | str, ...] | None and cfg.gamma == (1, 2, "auto")
    assert cfg.temperature == (0.0, 1.0) and cfg.batch_size == (1, 2) and isinstance(cfg.repeats, int)
    g = GenerateConfig(gamma="3")
    assert g.gamma == 3 and typing.get_type_hints(GenerateConfig)["gamma"] == int | str
    assert GenerateConfig(gamma="Auto").gamma == "auto"


def test_the_value_rules():
    assert values.is_greedy(0) and values.is_greedy(0.0) and not values.is_greedy(values.MIN_TEMPERATURE)
    assert values.check_temperature(values.MIN_TEMPERATURE) == values.MIN_TEMPERATURE
    for tiny in (1e-40, 1e-4):
        with pytest.raises(ValueError, match="use 0 for greedy"):
            values.check_temperature(tiny, "--temperature")
    assert values.check_gamma(values.MAX_GAMMA) == values.MAX_GAMMA and values.check_gamma(" AUTO ") == "auto"
    with pytest.raises(ValueError, match=f"gamma must be >= 1 and <= {values.MAX_GAMMA}"):
        values.check_gamma(values.MAX_GAMMA + 1)
    with pytest.raises(ValueError, match="max_gamma must be an integer"):
        values.check_gamma("auto", "max_gamma", auto=False)
    assert values.check_seed(values.MAX_SEED) == values.MAX_SEED and values.check_seed(None) is None
    for bad in (values.MAX_SEED + 1, -1):
        with pytest.raises(ValueError, match="--seed must be >= 0 and <= 9223372036854775807"):
            values.check_seed(bad, "--seed")
    assert values.check_token_ids([3, 4]) == (3, 4) and values.check_token_ids(None) == ()


@pytest.mark.parametrize("call, match", [
    (lambda: values.check_int(2.5, "top_k"), "top_k must be an integer"),
    (lambda: values.check_int(True, "max_new_tokens"), "max_new_tokens must be an integer"),
    (lambda: values.check_seed("abc"), "seed must be an integer"),
    (lambda: values.check_token_ids("36"), "eos_token_id must be an integer"),
    (lambda: values.check_number("0.5", "top_p"), "top_p must be a number"),
])
def test_wrong_types_are_type_errors_naming_the_argument(call, match):
    with pytest.raises(TypeError, match=match) as e:
        call()
    assert isinstance(e.value, ValueError)   # the CLI's one error path and `except ValueError` catch it too
