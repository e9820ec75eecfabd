"""Tests of diffcal.pipe.TaskMetadata."""

from __future__ import annotations

import json
import logging
import math
import pickle
import platform
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lsst.utils.timer import logInfo

from diffcal.pipe import TaskMetadata

# -- keys and hierarchy -------------------------------------------------------


def test_dotted_key_creates_hierarchy():
    md = TaskMetadata()
    md["a.b.c"] = 3
    assert isinstance(md["a"], TaskMetadata)
    assert isinstance(md["a.b"], TaskMetadata)
    assert md["a.b.c"] == 3
    assert md["a"]["b.c"] == 3
    assert md["a"]["b"]["c"] == 3
    assert md.keys() == ("a",)
    md["a.b.d"] = "x"
    assert md["a.b"].keys() == ("c", "d")


def test_assigning_replaces_other_kinds():
    md = TaskMetadata()
    md["k"] = 1
    md["k"] = [1.0, 2.0]
    assert md.getArray("k") == [1.0, 2.0]
    md["k"] = {"x": True}
    assert md["k.x"] is True
    md["k"] = "s"
    assert md["k"] == "s"
    assert md.names() == {"k"}
    assert md.to_dict() == {"k": "s"}


def test_cannot_nest_below_a_leaf():
    md = TaskMetadata()
    md["a"] = 1
    with pytest.raises(KeyError, match="'a' holds a value"):
        md["a.b"] = 2
    assert md.to_dict() == {"a": 1}


@pytest.mark.parametrize("key", ["", "a..b", ".a", "a.", 3, None])
def test_invalid_keys(key):
    md = TaskMetadata()
    with pytest.raises(KeyError):
        md[key] = 1
    with pytest.raises(KeyError):
        md[key]
    assert key not in md


def test_missing_keys():
    md = TaskMetadata({"a": {"b": 1}})
    for key in ["x", "a.x", "a.b.c", "x.y"]:
        with pytest.raises(KeyError):
            md[key]
        assert key not in md
        assert md.get(key) is None
        assert md.get(key, 7) == 7
    with pytest.raises(KeyError):
        del md["a.x"]


def test_contains_get_and_del():
    md = TaskMetadata()
    md["a.b"] = 1
    md["c"] = [1, 2]
    assert "a" in md and "a.b" in md and "c" in md
    assert md.get("c") == 2
    del md["a.b"]
    assert "a.b" not in md
    assert "a" in md
    assert md["a"].keys() == ()
    del md["a"]
    assert md.keys() == ("c",)


def test_names_and_paramNames():
    md = TaskMetadata()
    md["top"] = 1
    md["arr"] = [1, 2]
    md["a.b.c"] = 3
    md["a.d"] = "x"
    assert md.names() == {"top", "arr", "a", "a.b", "a.b.c", "a.d"}
    assert md.paramNames(topLevelOnly=True) == {"top", "arr"}
    assert md.paramNames(topLevelOnly=False) == {"top", "arr", "a.b.c", "a.d"}


def test_keys_items_values_are_top_level():
    md = TaskMetadata()
    md["s"] = 1.5
    md["arr"] = [1, 2, 3]
    md["n.x"] = 1
    assert md.keys() == ("s", "arr", "n")
    assert list(md) == ["s", "arr", "n"]
    assert len(md) == 3
    items = dict(md.items())
    assert items["s"] == 1.5
    assert items["arr"] == [1, 2, 3]  # whole array, not its last element
    assert items["n"] is md["n"]  # nested container is live
    items["arr"].append(4)  # a copy: the stored array is unchanged
    assert md.getArray("arr") == [1, 2, 3]
    assert md.values() == [1.5, [1, 2, 3], md["n"]]


def test_is_a_mapping():
    assert isinstance(TaskMetadata(), Mapping)


# -- values ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["s", 1.5, 2, True, False, -0.0, math.inf])
def test_scalar_types_kept_exactly(value):
    md = TaskMetadata()
    md["v"] = value
    assert md["v"] == value
    assert type(md["v"]) is type(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float64(1.5), 1.5),
        (np.float32(0.5), 0.5),
        (np.int64(3), 3),
        (np.int8(-2), -2),
        (np.bool_(True), True),
        (np.str_("x"), "x"),
    ],
)
def test_numpy_scalars_are_coerced(value, expected):
    md = TaskMetadata()
    md["v"] = value
    assert md["v"] == expected
    assert type(md["v"]) is type(expected)
    md["l"] = [value, value]
    assert [type(v) for v in md.getArray("l")] == [type(expected)] * 2


@pytest.mark.parametrize(
    "value",
    [np.array([1.0, 2.0]), np.array(3.0), None, object(), b"bytes", 1 + 2j, {1, 2}, np.complex128(1j)],
)
def test_disallowed_values_raise_valueerror(value):
    md = TaskMetadata()
    with pytest.raises(ValueError, match="'v'"):
        md["v"] = value
    assert "v" not in md


@pytest.mark.parametrize("value", [[1, 2.0], [True, 1], ["a", 1], [1, None], [[1], [2]], [{"a": 1}]])
def test_bad_lists_raise_valueerror(value):
    md = TaskMetadata()
    with pytest.raises(ValueError):
        md["v"] = value
    assert "v" not in md


def test_mapping_becomes_nested_copy_but_metadata_is_live():
    source = {"x": 1, "y": {"z": [1.0]}}
    md = TaskMetadata()
    md["m"] = source
    source["x"] = 2
    assert md["m.x"] == 1
    assert md.getArray("m.y.z") == [1.0]
    child = TaskMetadata()
    md["c"] = child
    child["late"] = 5
    assert md["c.late"] == 5
    assert md["c"] is child


def test_tuple_is_stored_as_list():
    md = TaskMetadata()
    md["t"] = (1, 2)
    assert md.getArray("t") == [1, 2]
    assert md.to_dict() == {"t": [1, 2]}


def test_array_reading():
    md = TaskMetadata()
    md["a"] = [1, 2, 3]
    assert md["a"] == 3
    assert md.getScalar("a") == 3
    assert md.getArray("a") == [1, 2, 3]
    md.getArray("a").append(9)  # a copy
    assert md.getArray("a") == [1, 2, 3]
    md["s"] = "x"
    assert md.getArray("s") == ["x"]
    assert md.getScalar("s") == "x"
    md["n.k"] = 1
    assert md.getArray("n") == [md["n"]]


def test_empty_array():
    md = TaskMetadata()
    md["e"] = []
    assert "e" in md
    assert md.getArray("e") == []
    with pytest.raises(KeyError, match="empty array"):
        md["e"]
    assert md.get("e", "default") == "default"
    md.add("e", 2.5)
    assert md.getArray("e") == [2.5]


# -- add ------------------------------------------------------------------------


def test_add_creates_array_and_appends():
    md = TaskMetadata()
    md.add("x", 1)
    assert md.getArray("x") == [1]
    md.add("x", 2)
    assert md.getArray("x") == [1, 2]
    assert md["x"] == 2
    md.add("x", [3, 4])
    assert md.getArray("x") == [1, 2, 3, 4]


def test_add_turns_scalar_into_array():
    md = TaskMetadata()
    md["x"] = "a"
    md.add("x", "b")
    assert md.getArray("x") == ["a", "b"]


def test_add_dotted_creates_hierarchy_and_coerces_numpy():
    md = TaskMetadata()
    md.add("a.b", np.float64(1.0))
    md.add("a.b", np.float32(2.0))
    assert md.getArray("a.b") == [1.0, 2.0]
    assert all(type(v) is float for v in md.getArray("a.b"))


@pytest.mark.parametrize(("first", "second"), [(1, 2.0), (1.0, 2), (True, 1), ("a", 1), (1, "a")])
def test_add_type_change_raises(first, second):
    md = TaskMetadata()
    md.add("x", first)
    with pytest.raises(ValueError, match="cannot add"):
        md.add("x", second)
    assert md.getArray("x") == [first]
    md2 = TaskMetadata()
    md2["x"] = first  # scalar first
    with pytest.raises(ValueError):
        md2.add("x", second)
    assert md2["x"] == first


@pytest.mark.parametrize("value", [None, np.array([1, 2]), {"a": 1}, [1, 2.0], object()])
def test_add_bad_values_raise(value):
    md = TaskMetadata()
    with pytest.raises(ValueError):
        md.add("x", value)
    assert "x" not in md


def test_add_to_nested_metadata_raises():
    md = TaskMetadata({"n": {"k": 1}})
    with pytest.raises(ValueError, match="nested"):
        md.add("n", 1)


# -- equality and conversion --------------------------------------------------


def test_equality_is_type_strict_and_nan_aware():
    assert TaskMetadata({"a": 1}) == TaskMetadata({"a": 1})
    assert TaskMetadata({"a": 1}) != TaskMetadata({"a": 1.0})
    assert TaskMetadata({"a": 1}) != TaskMetadata({"a": True})
    assert TaskMetadata({"a": 1}) != TaskMetadata({"a": [1]})
    assert TaskMetadata({"a": [1, 2]}) != TaskMetadata({"a": [1, 3]})
    assert TaskMetadata({"a": [1, 2]}) != TaskMetadata({"a": [1]})
    assert TaskMetadata({"a": {"b": 1}}) != TaskMetadata({"a": {"b": 2}})
    assert TaskMetadata({"a": {"b": 1}}) != TaskMetadata({"a": 1})
    assert TaskMetadata({"a": 1}) != TaskMetadata({"b": 1})
    assert TaskMetadata({"a": math.nan}) == TaskMetadata({"a": float("nan")})
    assert TaskMetadata({"a": [math.nan]}) == TaskMetadata({"a": [float("nan")]})
    assert TaskMetadata({"a": 1}) != {"a": 1}


def test_to_dict_from_dict_round_trip():
    data = {"s": "x", "f": 1.5, "i": 2, "b": False, "l": [1, 2], "n": {"m": {"k": ["a", "b"]}}}
    md = TaskMetadata.from_dict(data)
    assert md.to_dict() == data
    assert TaskMetadata.from_dict(md.to_dict()) == md
    assert TaskMetadata.from_dict({"a.b": 1}).to_dict() == {"a": {"b": 1}}
    with pytest.raises(TypeError):
        TaskMetadata.from_dict([("a", 1)])


def test_json_round_trip_with_non_finite_floats():
    md = TaskMetadata()
    md["nan"] = math.nan
    md["inf"] = [math.inf, -math.inf]
    md["n.i"] = 1
    md["n.f"] = 1.0
    md["empty"] = []
    text = md.to_json()
    assert "NaN" in text and "Infinity" in text
    back = TaskMetadata.from_json(text)
    assert back == md
    assert type(back["n.i"]) is int and type(back["n.f"]) is float
    assert json.loads(md.to_json(indent=2)) == json.loads(text)


@pytest.mark.parametrize("text", ["[1, 2]", '{"a": null}', '{"a": [1, "x"]}', "not json"])
def test_from_json_errors(text):
    with pytest.raises(ValueError):
        TaskMetadata.from_json(text)


def test_pickle_round_trip():
    md = TaskMetadata({"a": [1, 2], "b": {"c": "x"}})
    assert pickle.loads(pickle.dumps(md)) == md


def test_repr_shows_content():
    assert repr(TaskMetadata({"a": 1})) == "TaskMetadata({'a': 1})"


# -- hypothesis: JSON round trip --------------------------------------------------

_keys = st.text(min_size=1, max_size=6).filter(lambda k: "." not in k)
# Non-finite and signed-zero floats are drawn often on purpose: they are the
# values a naive JSON writer or equality check gets wrong.
_floats = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0]))
_scalars = st.one_of(st.text(max_size=8), st.integers(), _floats, st.booleans())
_arrays = st.one_of(
    st.lists(st.text(max_size=4), max_size=4),
    st.lists(st.integers(), max_size=4),
    st.lists(_floats, max_size=4),
    st.lists(st.booleans(), max_size=4),
)
_trees = st.recursive(
    st.dictionaries(_keys, _scalars | _arrays, max_size=4),
    lambda children: st.dictionaries(_keys, _scalars | _arrays | children, max_size=4),
    max_leaves=20,
)


@settings(database=None, max_examples=200, deadline=None)
@given(_trees)
def test_json_round_trip_property(data):
    md = TaskMetadata.from_dict(data)
    text = md.to_json()
    assert text == json.dumps(data)  # same layout and key order as the input
    back = TaskMetadata.from_json(text)
    assert back == md
    assert back.to_json() == text


# -- compatibility with lsst.utils.timer.logInfo --------------------------------


class _Holder:
    def __init__(self):
        self.metadata = TaskMetadata()
        self.log = logging.getLogger("diffcal.test.holder")


_SUFFIXES = [
    "Utc",
    "CpuTime",
    "UserTime",
    "SystemTime",
    "MaxResidentSetSize",
    "MinorPageFaults",
    "MajorPageFaults",
    "BlockInputs",
    "BlockOutputs",
    "VoluntaryContextSwitches",
    "InvoluntaryContextSwitches",
]


def test_logInfo_writes_into_taskmetadata():
    holder = _Holder()
    logInfo(obj=holder, prefix="stepStart")
    logInfo(obj=holder, prefix="stepStart")
    md = holder.metadata
    expected = {f"stepStart{s}" for s in _SUFFIXES} | {"__version__", "nodeName"}
    assert md.paramNames(topLevelOnly=True) == expected
    assert md["__version__"] == 1
    assert md.getArray("__version__") == [1]
    assert md["nodeName"] == platform.node()
    assert len(md.getArray("stepStartCpuTime")) == 2
    assert type(md["stepStartCpuTime"]) is float
    assert type(md["stepStartMaxResidentSetSize"]) is int
    assert md["stepStartUtc"].endswith("+00:00")


def test_logInfo_with_explicit_metadata():
    md = TaskMetadata()
    logInfo(obj=None, prefix="xEnd", metadata=md)
    assert "xEndCpuTime" in md
    assert TaskMetadata.from_json(md.to_json()) == md
