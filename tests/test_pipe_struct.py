"""Tests of diffcal.pipe.Struct."""

from __future__ import annotations

import pickle

import pytest

from diffcal.pipe import Struct


def test_keyword_construction_and_attributes():
    s = Struct(a=1, b="two", c=[3])
    assert s.a == 1
    assert s.b == "two"
    assert s.c == [3]
    assert len(s) == 3
    assert len(Struct()) == 0


def test_repr_uses_semicolons():
    assert repr(Struct(a=1, b=2)) == "Struct(a=1; b=2)"
    assert repr(Struct(name="x")) == "Struct(name='x')"
    assert repr(Struct()) == "Struct()"


@pytest.mark.parametrize("bad", ["__x", "__dict__", "__len__"])
def test_dunder_prefixed_name_is_rejected(bad):
    with pytest.raises(RuntimeError, match=bad):
        Struct(**{bad: 1})


@pytest.mark.parametrize("method", ["getDict", "mergeItems", "copy"])
def test_name_shadowing_a_method_is_rejected(method):
    with pytest.raises(RuntimeError, match=method):
        Struct(**{method: 1})


def test_single_underscore_name_is_allowed():
    assert Struct(_private=1)._private == 1


def test_getDict_is_a_shallow_copy():
    value = [1, 2]
    s = Struct(a=value, b=2)
    d = s.getDict()
    assert d == {"a": value, "b": 2}
    d["c"] = 3
    del d["b"]
    assert s.getDict() == {"a": value, "b": 2}
    assert d["a"] is value


def test_mergeItems_copies_named_items_only():
    source = Struct(a=1, b=2, c=3)
    target = Struct(x=0)
    target.mergeItems(source, "a", "c")
    assert target.getDict() == {"x": 0, "a": 1, "c": 3}
    target.mergeItems(source)
    assert len(target) == 3


def test_mergeItems_duplicate_raises():
    target = Struct(a=0)
    with pytest.raises(RuntimeError, match="'a' is already present"):
        target.mergeItems(Struct(a=1), "a")
    assert target.a == 0


def test_mergeItems_missing_source_item_raises():
    with pytest.raises(AttributeError):
        Struct().mergeItems(Struct(a=1), "nope")


def test_copy_is_one_level():
    inner = {"k": 1}
    s = Struct(a=inner, b=2)
    c = s.copy()
    assert isinstance(c, Struct)
    assert c == s
    assert c is not s
    assert c.a is inner
    c.b = 5
    assert s.b == 2


def test_equality():
    assert Struct(a=1, b=2) == Struct(a=1, b=2)
    assert Struct(a=1, b=2) != Struct(a=1, b=3)
    assert Struct(a=1) != Struct(a=1, b=2)
    assert Struct(a=1) != {"a": 1}


def test_pickle_round_trip():
    s = Struct(a=1, b=[1.5, 2.5], c="x")
    assert pickle.loads(pickle.dumps(s)) == s
