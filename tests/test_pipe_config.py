"""Tests of the config layer as used by diffcal.pipe.Task.

Retargeting (ConfigurableField and RegistryField), save/load, validation at
construction and freezing. Configs are compared with ``compare()``: ``==`` is
unreliable for configs holding a ConfigurableField.
"""

from __future__ import annotations

import pickle

import lsst.pex.config
import lsst.utils.logging
import lsst.utils.timer
import pytest

import diffcal.pipe as pipe
from diffcal.pipe import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigDictField,
    ConfigField,
    DictField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
    Struct,
    Task,
    makeRegistry,
    registerConfigurable,
    timeMethod,
)

# -- subtasks and their alternatives ---------------------------------------------------


class ScaleConfig(Config):
    factor = RangeField[float](doc="multiplier", default=2.0, min=0.0)


class ScaleTask(Task):
    ConfigClass = ScaleConfig
    _DefaultName = "scale"

    @timeMethod
    def run(self, x):
        return Struct(value=x * self.config.factor)


class ShiftConfig(Config):
    offset = Field[float](doc="added to the input", default=100.0)


class ShiftTask(Task):
    ConfigClass = ShiftConfig
    _DefaultName = "shift"

    @timeMethod
    def run(self, x):
        return Struct(value=x + self.config.offset)


class DoubleScaleTask(ScaleTask):
    """Same ConfigClass as ScaleTask, different behaviour."""

    @timeMethod
    def run(self, x):
        return Struct(value=2 * x * self.config.factor)


operations = makeRegistry("Elementary operations")
registerConfigurable("scale", operations)(ScaleTask)
registerConfigurable("shift", operations)(ShiftTask)


class ChainConfig(Config):
    step = ScaleTask.makeField("retargetable step")
    op = operations.makeField("registry-selected operation", default="scale")
    mode = ChoiceField[str](doc="a choice", default="fast", allowed={"fast": "quick", "slow": "careful"})


class ChainTask(Task):
    ConfigClass = ChainConfig
    _DefaultName = "chain"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("step")
        self.makeSubtask("op")

    def run(self, x):
        return Struct(step=self.step.run(x).value, op=self.op.run(x).value)


# -- cross-field validation and range defaults ---------------------------------------------


class IntervalConfig(Config):
    low = Field[float](doc="lower bound", default=0.0)
    high = Field[float](doc="upper bound", default=1.0)

    def validate(self):
        super().validate()
        if self.low >= self.high:
            raise FieldValidationError(type(self).low, self, f"low={self.low} must be below high={self.high}")


class IntervalTask(Task):
    ConfigClass = IntervalConfig
    _DefaultName = "interval"


class HoldsIntervalConfig(Config):
    interval = IntervalTask.makeField("subtask with cross-field validation")


class HoldsIntervalTask(Task):
    ConfigClass = HoldsIntervalConfig
    _DefaultName = "holder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("interval")


class BadDefaultConfig(Config):
    sigma = RangeField[float](doc="must be positive", default=-1.0, min=0.0)


class BadDefaultTask(Task):
    ConfigClass = BadDefaultConfig
    _DefaultName = "badDefault"


class Inner(Config):
    n = Field[int](doc="a number", default=3)


class Other(Config):
    s = Field[str](doc="a string", default="x")


class KitchenSinkConfig(Config):
    values = ListField[float](doc="a list", default=[1.0, 2.0], itemCheck=lambda v: v > 0)
    table = DictField(doc="a dict", keytype=str, itemtype=int, default={"a": 1})
    inner = ConfigField(doc="nested", dtype=Inner)
    choice = ConfigChoiceField(
        doc="choice of configs", typemap={"inner": Inner, "other": Other}, default="inner"
    )
    many = ConfigDictField(doc="dict of configs", keytype=str, itemtype=Inner, default={})


# -- re-exports --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Config",
        "Field",
        "RangeField",
        "ChoiceField",
        "ListField",
        "DictField",
        "ConfigField",
        "ConfigChoiceField",
        "ConfigDictField",
        "ConfigurableField",
        "RegistryField",
        "makeRegistry",
        "registerConfigurable",
        "FieldValidationError",
    ],
)
def test_pex_config_reexports(name):
    assert getattr(pipe, name) is getattr(lsst.pex.config, name)


def test_utils_reexports():
    assert pipe.timeMethod is lsst.utils.timer.timeMethod
    assert pipe.getLogger is lsst.utils.logging.getLogger


def test_public_names():
    for name in pipe.__all__:
        assert hasattr(pipe, name), name
    assert {"Task", "TaskError", "Struct", "TaskMetadata", "timeMethod"} <= set(pipe.__all__)


# -- defaults and retargeting -----------------------------------------------------------------


def test_default_chain():
    task = ChainTask()
    assert type(task.step) is ScaleTask
    assert type(task.op) is ScaleTask
    assert task.op.getFullName() == "chain.op"
    assert task.run(3.0) == Struct(step=6.0, op=6.0)


def test_configurable_field_retarget_to_other_config_class():
    config = ChainConfig()
    config.step.factor = 5.0
    config.step.retarget(ShiftTask, ShiftConfig)
    assert config.step.target is ShiftTask
    assert isinstance(config.step.value, ShiftConfig)
    assert config.step.offset == 100.0  # reset to the new class's defaults
    config.step.offset = 0.5
    task = ChainTask(config=config)
    assert type(task.step) is ShiftTask
    assert task.step.config is config.step.value
    assert task.run(3.0).step == 3.5
    assert "chain:step.runEndCpuTime" in task.getFullMetadata()


def test_configurable_field_retarget_same_config_class_keeps_values():
    config = ChainConfig()
    config.step.factor = 5.0
    config.step.retarget(DoubleScaleTask)
    assert config.step.factor == 5.0
    task = ChainTask(config=config)
    assert type(task.step) is DoubleScaleTask
    assert task.run(1.0).step == 10.0


def test_registry_field_selection():
    config = ChainConfig()
    config.op.name = "shift"
    config.op["shift"].offset = -1.0
    config.op["scale"].factor = 9.0  # inactive choice: kept but unused
    task = ChainTask(config=config)
    assert type(task.op) is ShiftTask
    assert task.op.config is config.op.active
    assert task.run(3.0).op == 2.0
    # A subtask built directly takes the active choice of the registry field.
    direct = ShiftTask(None, "op", task)
    assert direct.config is config.op.active


def test_choice_field_rejects_unknown_value():
    config = ChainConfig()
    with pytest.raises(FieldValidationError):
        config.mode = "medium"


# -- save / load ---------------------------------------------------------------------------------


def _modifiedConfig():
    config = ChainConfig()
    config.step.retarget(ShiftTask, ShiftConfig)
    config.step.offset = 0.25
    config.op.name = "shift"
    config.op["shift"].offset = 7.0
    config.mode = "slow"
    return config


def test_save_load_string_round_trip():
    config = _modifiedConfig()
    text = config.saveToString()
    assert "retarget(" in text
    assert "ShiftTask" in text
    loaded = ChainConfig()
    assert not loaded.compare(config)
    loaded.loadFromString(text)
    assert loaded.compare(config)
    assert config.compare(loaded)
    assert loaded.step.target is ShiftTask
    task = ChainTask(config=loaded)
    assert type(task.step) is ShiftTask
    assert task.run(1.0) == Struct(step=1.25, op=8.0)


def test_save_load_file_round_trip(tmp_path):
    config = _modifiedConfig()
    path = tmp_path / "chain_config.py"
    config.save(str(path))
    assert path.read_text().count("config.") > 0
    loaded = ChainConfig()
    loaded.load(str(path))
    assert loaded.compare(config)
    loaded.op["shift"].offset = 8.0
    assert not loaded.compare(config)


def test_save_load_all_field_types():
    config = KitchenSinkConfig()
    config.values.append(3.0)
    config.table["b"] = 2
    config.inner.n = 5
    config.choice.name = "other"
    config.choice["other"].s = "changed"
    config.many["k"] = Inner(n=11)
    loaded = KitchenSinkConfig()
    loaded.loadFromString(config.saveToString())
    assert loaded.compare(config)
    assert list(loaded.values) == [1.0, 2.0, 3.0]
    assert dict(loaded.table) == {"a": 1, "b": 2}
    assert loaded.many["k"].n == 11
    with pytest.raises(FieldValidationError):
        config.values.append(-1.0)


# -- validation at construction ---------------------------------------------------------------


def test_custom_validate_fails_at_construction():
    config = IntervalConfig()
    config.low = 2.0
    with pytest.raises(FieldValidationError, match="must be below"):
        IntervalTask(config=config)
    config.high = 3.0
    assert IntervalTask(config=config).config.high == 3.0


def test_invalid_subtask_config_fails_parent_construction():
    config = HoldsIntervalConfig()
    config.interval.low = 5.0
    with pytest.raises(FieldValidationError, match="must be below"):
        HoldsIntervalTask(config=config)


def test_range_field_out_of_range():
    with pytest.raises(FieldValidationError, match="outside of valid range"):
        BadDefaultTask()
    config = ChainConfig()
    with pytest.raises(FieldValidationError, match="outside of valid range"):
        config.step.factor = -1.0
    assert config.step.factor == 2.0


def test_required_field_none_fails_at_construction():
    config = ShiftConfig()
    config.offset = None
    with pytest.raises(FieldValidationError, match="offset"):
        ShiftTask(config=config)


def test_unknown_attribute_raises():
    config = ChainConfig()
    with pytest.raises(AttributeError):
        config.nonexistent = 1


# -- freeze -----------------------------------------------------------------------------------------


def test_freeze():
    config = ChainConfig()
    config.freeze()
    with pytest.raises(FieldValidationError):
        config.mode = "slow"
    with pytest.raises(FieldValidationError):
        config.step.factor = 3.0
    with pytest.raises(FieldValidationError):
        config.op["scale"].factor = 3.0
    task = ChainTask(config=config)  # a frozen config is fine for a task
    assert task.run(1.0) == Struct(step=2.0, op=2.0)
    thawed = config.copy()
    thawed.mode = "slow"
    assert thawed.mode == "slow"


# -- pickling ---------------------------------------------------------------------------------------


def test_pickle_task_with_retargeted_config():
    task = ChainTask(config=_modifiedConfig())
    copy = pickle.loads(pickle.dumps(task))
    assert copy.config.compare(task.config)
    assert type(copy.step) is ShiftTask
    assert type(copy.op) is ShiftTask
    assert copy.run(1.0) == task.run(1.0)
