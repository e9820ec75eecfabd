"""Tests of diffcal.pipe.Task: names, tree, metadata, timing, logging, pickling.

Task classes are defined at module level so that they can be pickled.
"""

from __future__ import annotations

import logging
import pickle
import platform

import pytest
from lsst.utils.logging import LsstLogAdapter

from diffcal.errors import DiffcalError
from diffcal.pipe import (
    Config,
    ConfigurableField,
    Field,
    FieldValidationError,
    Struct,
    Task,
    TaskError,
    TaskMetadata,
    timeMethod,
)

# -- a three-level task tree -------------------------------------------------------


class LeafConfig(Config):
    offset = Field[float](doc="added to the input", default=1.0)


class LeafTask(Task):
    ConfigClass = LeafConfig
    _DefaultName = "leaf"

    def getSchemaCatalogs(self):
        return {"leafCatalog": ("leaf schema", self.getFullName())}

    @timeMethod
    def run(self, x):
        return Struct(value=x + self.config.offset)


class MidConfig(Config):
    subsub = LeafTask.makeField("the leaf subtask")
    scale = Field[float](doc="multiplies the input", default=2.0)


class MidTask(Task):
    ConfigClass = MidConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("subsub")

    def getSchemaCatalogs(self):
        return {"midCatalog": ("mid schema", self.getFullName())}

    @timeMethod
    def run(self, x):
        return Struct(value=self.subsub.run(x * self.config.scale).value)


class TopConfig(Config):
    sub = MidTask.makeField("the middle subtask")


class TopTask(Task):
    ConfigClass = TopConfig
    _DefaultName = "top"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("sub")

    @timeMethod
    def run(self, x):
        self.metadata["answer"] = 6.0
        with self.timer("inner"):
            result = self.sub.run(x)
        return result


class NoNameTask(Task):
    ConfigClass = LeafConfig


class NoConfigClassTask(Task):
    _DefaultName = "noConfigClass"


class FailingTask(Task):
    ConfigClass = LeafConfig
    _DefaultName = "failing"

    @timeMethod
    def run(self):
        raise TaskError("expected failure")


class ExtraArgTask(Task):
    """A subtask whose constructor takes an extra argument."""

    ConfigClass = LeafConfig
    _DefaultName = "extra"

    def __init__(self, *args, factor=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = factor

    def _reduce_kwargs(self):
        kwargs = super()._reduce_kwargs()
        kwargs["factor"] = self.factor
        return kwargs


class ExtraParentConfig(Config):
    extra = ExtraArgTask.makeField("subtask with an extra argument")


class ExtraParentTask(Task):
    ConfigClass = ExtraParentConfig
    _DefaultName = "extraParent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("extra", factor=7)


class UnprefixedTask(Task):
    ConfigClass = LeafConfig
    _DefaultName = "bare"
    _add_module_logger_prefix = False


_TIMER_SUFFIXES = [
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


def timedKeys(method):
    """The 22 keys that one timed method writes."""
    return {f"{method}{edge}{suffix}" for edge in ("Start", "End") for suffix in _TIMER_SUFFIXES}


def allTasks(top):
    return [top, top.sub, top.sub.subsub]


# -- construction and names ---------------------------------------------------------


def test_names_and_full_names():
    top = TopTask()
    assert [t.getName() for t in allTasks(top)] == ["top", "sub", "subsub"]
    assert [t.getFullName() for t in allTasks(top)] == ["top", "top.sub", "top.sub.subsub"]
    assert isinstance(top.sub, MidTask)
    assert isinstance(top.sub.subsub, LeafTask)
    assert top.run(1.0).value == 3.0


def test_explicit_name_and_positional_arguments():
    config = TopConfig()
    config.sub.scale = 10.0
    parentLog = logging.getLogger("custom")
    top = TopTask(config, "renamed", None, parentLog)
    assert top.config is config
    assert top.getFullName() == "renamed"
    assert top.sub.getFullName() == "renamed.sub"
    assert top.log.name == "custom.renamed"
    assert top.sub.log.name == "custom.renamed.sub"
    assert top.run(1.0).value == 11.0


def test_subtask_config_defaults_to_parent_attribute():
    top = TopTask()
    assert top.sub.config is top.config.sub.value
    assert top.sub.subsub.config is top.config.sub.subsub.value
    # A subtask built directly (not via makeSubtask) takes getattr(parent.config, name),
    # with the ConfigurableField proxy unwrapped to the Config it holds.
    direct = MidTask(None, "sub", top)
    assert direct.config is top.config.sub.value
    assert isinstance(direct.config, MidConfig)
    # The same two levels down.
    leaf = LeafTask(None, "subsub", top.sub)
    assert leaf.config is top.config.sub.subsub.value


def test_subtask_without_config_field():
    top = TopTask()
    with pytest.raises(AttributeError, match="no field 'standalone'"):
        MidTask(name="standalone", parentTask=top)
    assert MidTask(MidConfig(), "standalone", top).getFullName() == "top.standalone"


def test_top_level_name_required():
    with pytest.raises(RuntimeError, match="NoNameTask"):
        NoNameTask()
    assert NoNameTask(name="given").getName() == "given"


def test_subtask_name_required():
    top = TopTask()
    with pytest.raises(RuntimeError, match="needs a name"):
        LeafTask(config=LeafConfig(), parentTask=top)


def test_missing_config_class():
    with pytest.raises(TypeError, match="ConfigClass"):
        NoConfigClassTask()
    assert NoConfigClassTask(config=LeafConfig()).getName() == "noConfigClass"


@pytest.mark.parametrize("bad", ["", "a.b", "a:b", 3])
def test_invalid_names(bad):
    with pytest.raises(ValueError, match="Invalid task name"):
        LeafTask(name=bad)
    with pytest.raises(ValueError, match="Invalid task name"):
        LeafTask(LeafConfig(), bad, TopTask())


def test_configurable_proxy_passed_as_config_is_unwrapped():
    top = TopTask()
    task = MidTask(top.config.sub, "again", top)
    assert task.config is top.config.sub.value


def test_config_must_be_a_config():
    with pytest.raises(TypeError, match="'top'"):
        TopTask("top")
    with pytest.raises(TypeError, match="dict"):
        LeafTask(config={"offset": 1.0})


def test_config_is_validated_at_construction():
    config = LeafConfig()
    config.offset = None  # Field is not optional: validate() must fail
    with pytest.raises(FieldValidationError, match="offset"):
        LeafTask(config=config)


def test_task_error():
    task = FailingTask()
    with pytest.raises(TaskError, match="expected failure"):
        task.run()
    assert issubclass(TaskError, DiffcalError)
    assert issubclass(TaskError, RuntimeError)
    assert "runEndCpuTime" in task.metadata  # the End items are written on failure too


# -- the task registry ----------------------------------------------------------------


def test_getTaskDict_identity_from_every_node():
    top = TopTask()
    expected = {"top": top, "top.sub": top.sub, "top.sub.subsub": top.sub.subsub}
    for node in allTasks(top):
        taskDict = node.getTaskDict()
        assert taskDict.keys() == expected.keys()
        for key, task in expected.items():
            assert taskDict[key] is task
        taskDict.clear()  # a copy: the registry is unaffected
    assert len(top.getTaskDict()) == 3


def test_separate_trees_have_separate_registries():
    first, second = TopTask(), TopTask(name="other")
    assert set(first.getTaskDict()) == {"top", "top.sub", "top.sub.subsub"}
    assert set(second.getTaskDict()) == {"other", "other.sub", "other.sub.subsub"}


def test_makeSubtask_forwards_kwargs():
    parent = ExtraParentTask()
    assert parent.extra.factor == 7
    assert parent.extra.getFullName() == "extraParent.extra"


@pytest.mark.parametrize("reserved", ["config", "name", "parentTask"])
def test_makeSubtask_reserved_kwargs(reserved):
    parent = ExtraParentTask()
    with pytest.raises(TypeError, match=reserved):
        parent.makeSubtask("extra", **{reserved: None})


def test_makeSubtask_missing_field():
    top = TopTask()
    with pytest.raises(KeyError, match="nope"):
        top.makeSubtask("nope")


def test_makeField():
    field = LeafTask.makeField("a doc")
    assert isinstance(field, ConfigurableField)
    assert field.target is LeafTask
    assert field.ConfigClass is LeafConfig
    assert field.doc == "a doc"


# -- schema catalogs -------------------------------------------------------------------


def test_schema_catalogs():
    top = TopTask()
    assert top.getSchemaCatalogs() == {}
    assert top.sub.getSchemaCatalogs() == {"midCatalog": ("mid schema", "top.sub")}
    expected = {
        "midCatalog": ("mid schema", "top.sub"),
        "leafCatalog": ("leaf schema", "top.sub.subsub"),
    }
    for node in allTasks(top):
        assert node.getAllSchemaCatalogs() == expected
    assert LeafTask().getAllSchemaCatalogs() == {"leafCatalog": ("leaf schema", "leaf")}


# -- metadata ------------------------------------------------------------------------


def test_full_metadata_layout_after_two_runs():
    top = TopTask()
    top.run(1.0)
    top.run(2.0)
    md = top.getFullMetadata()
    assert isinstance(md, TaskMetadata)
    assert set(md.keys()) == {"top", "top:sub", "top:sub:subsub"}
    assert len(md.getArray("top:sub:subsub.runStartCpuTime")) == 2
    assert len(md.getArray("top:sub.runEndUtc")) == 2
    assert len(md.getArray("top.innerEndMaxResidentSetSize")) == 2
    assert md["top.answer"] == 6.0
    assert md["top:sub:subsub.runStartCpuTime"] == md.getArray("top:sub:subsub.runStartCpuTime")[-1]
    starts = md.getArray("top:sub:subsub.runStartCpuTime")
    assert starts[0] <= starts[1]
    version_and_node = {"__version__", "nodeName"}
    assert md["top"].paramNames(True) == timedKeys("run") | timedKeys("inner") | version_and_node | {"answer"}
    assert md["top:sub"].paramNames(True) == timedKeys("run") | version_and_node
    assert md["top:sub:subsub"].paramNames(True) == timedKeys("run") | version_and_node
    assert len(timedKeys("run")) == 22
    for task in ("top", "top:sub", "top:sub:subsub"):
        assert md[f"{task}.__version__"] == 1
        assert md[f"{task}.nodeName"] == platform.node()
        assert md[f"{task}.runEndUtc"].endswith("+00:00")
        assert type(md[f"{task}.runEndMaxResidentSetSize"]) is int
        assert type(md[f"{task}.runStartCpuTime"]) is float
    # 3 task nodes + 47 items in top + 24 in each subtask
    assert len(md.names()) == 3 + 47 + 24 + 24
    assert TaskMetadata.from_json(md.to_json()) == md


def test_full_metadata_values_are_live():
    top = TopTask()
    snapshot = top.getFullMetadata()
    assert snapshot["top:sub"] is top.sub.metadata
    top.run(1.0)
    assert "top:sub:subsub.runEndCpuTime" in snapshot


def test_emptyMetadata_keeps_old_snapshots():
    top = TopTask()
    top.run(1.0)
    old = top.getFullMetadata()
    oldSubsub = top.sub.subsub.metadata
    top.emptyMetadata()
    for task in allTasks(top):
        assert len(task.metadata) == 0
    assert top.sub.subsub.metadata is not oldSubsub
    assert len(old.getArray("top:sub:subsub.runStartCpuTime")) == 1
    assert old["top.answer"] == 6.0
    top.run(1.0)
    new = top.getFullMetadata()
    assert len(new.getArray("top:sub:subsub.runStartCpuTime")) == 1
    assert len(old.getArray("top:sub:subsub.runStartCpuTime")) == 1


def test_emptyMetadata_from_a_subtask_empties_the_whole_tree():
    top = TopTask()
    top.run(1.0)
    top.sub.subsub.emptyMetadata()
    assert all(len(task.metadata) == 0 for task in allTasks(top))


# -- timer ------------------------------------------------------------------------------


def test_timer_writes_start_and_end():
    task = LeafTask()
    with task.timer("block"):
        assert "blockStartCpuTime" in task.metadata
        assert "blockEndCpuTime" not in task.metadata
    assert task.metadata.paramNames(True) == timedKeys("block") | {"__version__", "nodeName"}


def test_timer_end_written_on_exception():
    task = LeafTask()
    with pytest.raises(ZeroDivisionError):
        with task.timer("boom"):
            1 / 0
    assert "boomEndUtc" in task.metadata
    assert len(task.metadata.getArray("boomEndCpuTime")) == 1


def test_timer_logs_at_requested_level(caplog):
    task = LeafTask()
    timerLogger = f"timer.{task.log.name}"
    with caplog.at_level(logging.DEBUG, logger=timerLogger):
        with task.timer("quiet"):
            pass
        with task.timer("loud", logLevel=logging.INFO):
            pass
    records = [r for r in caplog.records if r.name == timerLogger]
    assert len(records) == 4
    quiet = [r for r in records if r.getMessage().startswith("quiet")]
    loud = [r for r in records if r.getMessage().startswith("loud")]
    assert [r.getMessage().split("=")[0] for r in quiet] == ["quietStartCpuTime", "quietEndCpuTime"]
    assert {r.levelno for r in quiet} == {logging.DEBUG}
    assert {r.levelno for r in loud} == {logging.INFO}


# -- logging ------------------------------------------------------------------------------


def test_logger_names():
    top = TopTask()
    assert isinstance(top.log, LsstLogAdapter)
    assert top.log.name == "test_pipe_task.top"
    assert top.sub.log.name == "test_pipe_task.top.sub"
    assert top.sub.subsub.log.name == "test_pipe_task.top.sub.subsub"
    assert isinstance(top.sub.subsub.log, LsstLogAdapter)
    assert UnprefixedTask().log.name == "bare"
    assert LeafTask(log=logging.getLogger("parent")).log.name == "parent.leaf"
    assert LeafTask(log=logging.getLogger()).log.name == "leaf"


def test_subtask_with_explicit_log():
    top = TopTask()
    leaf = LeafTask(LeafConfig(), "extraLeaf", top, logging.getLogger("elsewhere"))
    assert leaf.log.name == "elsewhere.extraLeaf"
    assert leaf.getFullName() == "top.extraLeaf"
    assert top.getTaskDict()["top.extraLeaf"] is leaf


def test_logger_has_lsst_levels(caplog):
    task = LeafTask()
    with caplog.at_level(5, logger=task.log.name):
        task.log.verbose("verbose message %d", 1)
        task.log.trace("trace message")
    messages = {(r.levelno, r.getMessage()) for r in caplog.records if r.name == task.log.name}
    assert messages == {(15, "verbose message 1"), (5, "trace message")}


# -- pickling --------------------------------------------------------------------------------


def test_pickle_task_tree():
    config = TopConfig()
    config.sub.scale = 3.0
    config.sub.subsub.offset = 0.5
    top = TopTask(config=config)
    top.run(1.0)
    copy = pickle.loads(pickle.dumps(top))
    assert type(copy) is TopTask
    assert copy is not top
    assert copy.config.compare(top.config)
    assert copy.config.sub.scale == 3.0
    assert [t.getFullName() for t in allTasks(copy)] == ["top", "top.sub", "top.sub.subsub"]
    taskDict = copy.getTaskDict()
    assert taskDict["top.sub.subsub"] is copy.sub.subsub
    assert copy.sub.subsub.getTaskDict()["top"] is copy
    assert copy.run(1.0).value == 3.5
    assert len(copy.getFullMetadata().getArray("top:sub.runStartCpuTime")) == 1  # fresh metadata


def test_pickle_subtask_rebuilds_parent():
    top = TopTask(name="named")
    subCopy = pickle.loads(pickle.dumps(top.sub))
    assert type(subCopy) is MidTask
    assert subCopy.getFullName() == "named.sub"
    assert subCopy.getTaskDict()["named"].getName() == "named"
    assert subCopy.getTaskDict()["named"] is not top


def test_pickle_uses_reduce_kwargs_hook():
    parent = ExtraParentTask()
    parent.extra.factor = 11
    copy = pickle.loads(pickle.dumps(parent.extra))
    assert copy.factor == 11
    assert copy.getFullName() == "extraParent.extra"
