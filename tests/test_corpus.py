"""The bundled corpus: the fixed train/held-out split rule and the built-in prompt sets."""

import re
import zlib

import pytest

from specdec.data import corpus


# Pinned: the rule is zlib.crc32(relpath) % 10 == 0, so these answers hold on every machine and
# every Python version. A change here silently reshuffles what the bundled pair was trained on.
@pytest.mark.parametrize("relpath, held", [
    ("asyncio/sslproto.py", True),
    ("random.py", True),
    ("xml/etree/ElementTree.py", True),
    ("os.py", False),
    ("json/decoder.py", False),
    ("email/mime/text.py", False),
    ("typing.py", False),
])
def test_split_rule_is_pinned(relpath, held):
    assert corpus.is_heldout(relpath) is held
    assert (zlib.crc32(relpath.encode()) % 10 == 0) is held


def test_split_rule_normalises_separators():
    assert corpus.is_heldout("xml\\etree\\ElementTree.py") == corpus.is_heldout("xml/etree/ElementTree.py")
    assert corpus.is_heldout("/random.py") == corpus.is_heldout("random.py")


def _write(root, rel, text="x = 1\n"):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_split_on_a_fake_stdlib(tmp_path):
    keep = ["os.py", "random.py", "json/decoder.py", "asyncio/sslproto.py", "zz/aa.py"]
    skip = ["test/test_os.py", "json/tests/x.py", "idlelib/run.py", "site-packages/pkg/m.py",
            "encodings/cp1252.py", "test_thing.py", "config-3.11-x86_64-linux-gnu/python-config.py",
            "notes.txt"]
    for rel in keep + skip:
        _write(tmp_path, rel)
    files = corpus.stdlib_files(tmp_path)
    rels = [p.relative_to(tmp_path).as_posix() for p in files]
    assert rels == sorted(keep)
    train, held = corpus.split_files(tmp_path)
    held_rels = {p.relative_to(tmp_path).as_posix() for p in held}
    assert held_rels == {"random.py", "asyncio/sslproto.py"}
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(files)


def test_real_split_keeps_heldout_out_of_training():
    root = corpus.stdlib_root()
    train, held = corpus.split_files()
    assert len(train) > 100 and len(held) > 5
    assert not set(train) & set(held)
    assert all(corpus.is_heldout(p.relative_to(root).as_posix()) for p in held)
    assert not any(corpus.is_heldout(p.relative_to(root).as_posix()) for p in train)
    assert sorted(train + held) == corpus.stdlib_files()


def test_missing_root_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="stdlib folder"):
        corpus.stdlib_files(tmp_path / "nope")


def test_prompts_per_category_are_nonempty_and_from_heldout_modules():
    prompts = corpus.builtin_prompts()
    by_cat = {c: [p for p in prompts if p["category"] == c] for c in corpus.CATEGORIES}
    assert len(corpus.CATEGORIES) >= 3
    for cat, items in by_cat.items():
        assert len(items) >= 10, cat
    ids = [p["id"] for p in prompts]
    assert len(ids) == len(set(ids))
    for p in prompts:
        assert set(p) >= {"id", "category", "prompt", "reference", "source"}
        assert corpus.PROMPT_MIN_CHARS <= len(p["prompt"]) <= corpus.PROMPT_MAX_CHARS
        assert corpus.is_heldout(p["source"])
        assert p["id"].startswith(p["category"] + "/" + p["source"] + ":")
        assert p["reference"].strip()


def test_prompt_shapes_per_category():
    for p in corpus.builtin_prompts(max_per_category=5):
        text = p["prompt"]
        if p["category"] == "docstring":
            assert text.endswith(('"""', "'''"))
        elif p["category"] == "comment":
            assert text.endswith("# ")
        elif p["category"] == "class":
            assert text.lstrip().startswith(("class ", "@"))
            assert text.endswith("\n")
        elif p["category"] == "function":
            assert re.search(r"^\s*(async )?def ", text, re.M)
            assert text.rstrip().endswith(('"""', "'''"))


def test_prompts_are_deterministic():
    a = corpus.builtin_prompts()
    b = corpus.builtin_prompts()
    assert a == b
    corpus._all_prompts.cache_clear()  # recompute from the files, not from the cache
    assert corpus.builtin_prompts() == a


def test_max_per_category_spreads_and_caps():
    full = corpus.builtin_prompts()
    few = corpus.builtin_prompts(max_per_category=4)
    for cat in corpus.CATEGORIES:
        got = [p for p in few if p["category"] == cat]
        assert len(got) == 4
        assert len({p["source"] for p in got}) > 1  # spread over modules, not the first file's
    assert all(p in full for p in few)
    only = corpus.builtin_prompts(max_per_category=2, categories=("class",))
    assert [p["category"] for p in only] == ["class", "class"]


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown prompt categories"):
        corpus.builtin_prompts(categories=("poems",))
    with pytest.raises(ValueError, match="max_per_category"):
        corpus.builtin_prompts(max_per_category=0)


def test_returned_prompts_are_copies():
    a = corpus.builtin_prompts(max_per_category=1)
    a[0]["prompt"] = "changed"
    assert corpus.builtin_prompts(max_per_category=1)[0]["prompt"] != "changed"
