"""`Task`: the base class of diffcal's configurable, timed processing steps."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

from ..errors import DiffcalError
from ._config import Config, ConfigurableField, ConfigurableInstance, LsstLogAdapter, getLogger, logInfo
from ._metadata import TaskMetadata

__all__ = ["Task", "TaskError"]


class TaskError(DiffcalError, RuntimeError):
    """An expected task failure whose traceback would not help the user.

    Raise it for known failure modes (bad input data, a fit that cannot
    converge) so that drivers can report the message alone. It derives from
    `diffcal.errors.DiffcalError` and `RuntimeError`.
    """


def _defaultSubtaskConfig(parentTask: Task, name: str) -> Any:
    """Return the config of subtask ``name``: ``getattr(parentTask.config, name)``.

    The proxy of a `ConfigurableField` and the selection of a single-choice
    `RegistryField` are unwrapped to the `Config` they hold.
    """
    try:
        value = getattr(parentTask.config, name)
    except AttributeError:
        raise AttributeError(
            f"Config of parent task {parentTask.getFullName()!r} ({type(parentTask.config).__name__}) "
            f"has no field {name!r}; pass a config for subtask {name!r}"
        ) from None
    if isinstance(value, ConfigurableInstance):
        return value.value
    active = getattr(value, "active", None)
    if not isinstance(value, Config) and isinstance(active, Config):
        return active
    return value


def _checkedName(name: Any) -> str:
    """Return ``name`` if it is a valid task name, else raise `ValueError`."""
    if not isinstance(name, str) or not name or "." in name or ":" in name:
        raise ValueError(f"Invalid task name {name!r}: need a non-empty str without '.' or ':'")
    return name


def _rebuildTask(cls: type[Task], kwargs: dict[str, Any]) -> Task:
    """Unpickling helper: construct ``cls(**kwargs)``."""
    return cls(**kwargs)


class Task:
    """Base class for configurable data-processing tasks.

    A subclass sets the class attributes ``ConfigClass`` (its
    `lsst.pex.config.Config` subclass) and, for top-level use,
    ``_DefaultName``. It usually builds its subtasks in ``__init__`` with
    `makeSubtask` and does its work in a ``run`` method decorated with
    `timeMethod` that returns a `Struct`.

    Parameters
    ----------
    config : `lsst.pex.config.Config`, optional
        Configuration. Defaults to ``ConfigClass()`` for a top-level task and
        to ``getattr(parentTask.config, name)`` for a subtask (a
        `~lsst.pex.config.ConfigurableField` proxy or single-choice
        `~lsst.pex.config.RegistryField` is unwrapped to its `Config`; so is
        a ConfigurableField proxy passed explicitly). It is
        validated (``config.validate()``) here, so a bad config fails at
        construction; it is not frozen.
    name : `str`, optional
        Short name. Defaults to ``_DefaultName`` for a top-level task;
        required for a subtask.
    parentTask : `Task`, optional
        The parent, for a subtask. Only a weak reference is kept.
    log : `logging.Logger` or `lsst.utils.logging.LsstLogAdapter`, optional
        If given, the task logs to its child named after the task.

    Raises
    ------
    RuntimeError
        If no name can be determined (top-level task without ``name`` or
        ``_DefaultName``; subtask without ``name``).
    ValueError
        If the name is empty or contains ``.`` or ``:`` (they separate
        levels in full names and full-metadata keys).
    AttributeError
        For a subtask without ``config`` whose parent config has no field
        ``name``.
    TypeError
        If ``config`` is not a `lsst.pex.config.Config`, or the class has no
        ``ConfigClass`` and no config was given.
    lsst.pex.config.FieldValidationError
        If the config fails validation.

    Attributes
    ----------
    config : `lsst.pex.config.Config`
        The task's configuration.
    metadata : `TaskMetadata`
        The task's own metadata (timing values from `timeMethod` and
        `timer`, plus whatever the task records).
    log : `lsst.utils.logging.LsstLogAdapter`
        The task's logger (see Notes).

    Notes
    -----
    Logger names: a top-level task given ``log`` logs to
    ``log.getChild(name)``. Otherwise its logger is named
    ``<root package of the task's class module>.<name>``, so diffcal's own
    tasks log under ``diffcal.<name>`` (a class defined in a script logs
    under ``__main__.<name>``); set the class attribute
    ``_add_module_logger_prefix = False`` to use ``<name>`` alone. A subtask
    logs to ``parentTask.log.getChild(name)``, or to ``log.getChild(name)``
    if ``log`` is given explicitly.

    All tasks of one tree share a registry keyed by full name; a subtask
    created twice under the same name replaces the earlier entry.

    Deliberate differences from current ``lsst.pipe.base.Task`` (which
    match the older API this library reproduces):

    * all four constructor arguments may be passed positionally;
    * `getTaskDict` returns the task objects, not weak references;
    * `getSchemaCatalogs` and `getAllSchemaCatalogs` exist;
    * metadata is diffcal's own `TaskMetadata` (no pydantic);
    * `TaskError` also derives from `RuntimeError`;
    * there is no ``lsstDebug`` hook.
    """

    ConfigClass: ClassVar[type[Config]]
    _DefaultName: ClassVar[str]
    _add_module_logger_prefix: ClassVar[bool] = True

    def __init__(
        self,
        config: Config | None = None,
        name: str | None = None,
        parentTask: Task | None = None,
        log: logging.Logger | LsstLogAdapter | None = None,
    ) -> None:
        self.metadata = TaskMetadata()
        self._parentTask: weakref.ReferenceType[Task] | None
        if parentTask is not None:
            if name is None:
                raise RuntimeError(
                    f"A subtask of {parentTask.getFullName()!r} of class {type(self).__name__} needs a name"
                )
            self._name = _checkedName(name)
            self._fullName = f"{parentTask.getFullName()}.{name}"
            self._parentTask = weakref.ref(parentTask)
            self._taskDict: dict[str, Task] = parentTask._taskDict
            if config is None:
                config = _defaultSubtaskConfig(parentTask, name)
            loggerName = (log if log is not None else parentTask.log).getChild(name).name
        else:
            if name is None:
                name = getattr(self, "_DefaultName", None)
                if name is None:
                    raise RuntimeError(
                        f"Task class {type(self).__name__} has no _DefaultName; pass a name to construct it"
                    )
            self._name = _checkedName(name)
            self._fullName = name
            self._parentTask = None
            self._taskDict = {}
            if config is None:
                configClass = getattr(self, "ConfigClass", None)
                if configClass is None:
                    raise TypeError(f"Task class {type(self).__name__} defines no ConfigClass; pass a config")
                config = configClass()
            if log is not None:
                loggerName = log.getChild(name).name
            elif self._add_module_logger_prefix:
                loggerName = f"{type(self).__module__.partition('.')[0]}.{name}"
            else:
                loggerName = name
        if isinstance(config, ConfigurableInstance):
            config = config.value
        if not isinstance(config, Config):
            raise TypeError(
                f"Task {self._fullName!r}: config must be an lsst.pex.config.Config, "
                f"got {type(config).__name__}: {config!r}"
            )
        config.validate()
        self.config = config
        self.log: LsstLogAdapter = getLogger(loggerName)
        self._taskDict[self._fullName] = self

    # -- names and the task tree ------------------------------------------

    def getName(self) -> str:
        """Return the short name of the task.

        Returns
        -------
        name : `str`
            E.g. ``"sub"`` for the task whose full name is ``"top.sub"``.
        """
        return self._name

    def getFullName(self) -> str:
        """Return the dotted name of the task within its tree.

        Returns
        -------
        fullName : `str`
            ``"top"`` for a top-level task, ``"top.sub"``,
            ``"top.sub.subsub"`` and so on for subtasks.
        """
        return self._fullName

    def getTaskDict(self) -> dict[str, Task]:
        """Return all tasks of the tree, keyed by full name.

        Returns
        -------
        taskDict : `dict` [`str`, `Task`]
            A shallow copy of the registry shared by the whole tree, so
            every node returns the same content. Unlike current
            ``lsst.pipe.base`` the values are the task objects themselves,
            not weak references.
        """
        return dict(self._taskDict)

    def makeSubtask(self, name: str, **kwargs: Any) -> None:
        """Build the subtask configured in ``self.config.<name>``.

        The field must be a `lsst.pex.config.ConfigurableField` or a
        `lsst.pex.config.RegistryField`; the configuration alone decides
        which class is built (its ``apply`` is called with ``name=name``,
        ``parentTask=self`` and ``config=`` the sub-config). The result is
        stored as ``self.<name>``.

        Parameters
        ----------
        name : `str`
            Name of the config field, which becomes the subtask's name and
            attribute.
        **kwargs
            Extra keyword arguments for the subtask constructor; ``config``,
            ``name`` and ``parentTask`` cannot be overridden.

        Raises
        ------
        KeyError
            If the config has no field ``name``.
        TypeError
            If ``kwargs`` contains ``config``, ``name`` or ``parentTask``.
        """
        reserved = sorted({"config", "name", "parentTask"} & kwargs.keys())
        if reserved:
            raise TypeError(
                f"makeSubtask({name!r}): {', '.join(reserved)} cannot be passed; they are set for you"
            )
        field = getattr(self.config, name, None)
        if field is None:
            raise KeyError(
                f"Config of task {self._fullName!r} ({type(self.config).__name__}) has no field {name!r}"
            )
        subtask = field.apply(name=name, parentTask=self, **kwargs)
        setattr(self, name, subtask)

    @classmethod
    def makeField(cls, doc: str) -> ConfigurableField:
        """Make a config field declaring a retargetable subtask of this class.

        Parameters
        ----------
        doc : `str`
            Documentation of the field.

        Returns
        -------
        field : `lsst.pex.config.ConfigurableField`
            Targets this class with its ``ConfigClass``; use it as a class
            attribute of the parent's config and build the subtask with
            `makeSubtask`.
        """
        return ConfigurableField(doc=doc, target=cls)

    # -- metadata -----------------------------------------------------------

    def getFullMetadata(self) -> TaskMetadata:
        """Return the metadata of every task in the tree.

        Returns
        -------
        metadata : `TaskMetadata`
            A new container with one top-level key per task: its full name
            with ``.`` replaced by ``:`` (``top``, ``top:sub``,
            ``top:sub:subsub``). The values are the tasks' own metadata
            objects (live references, not copies), so items read as e.g.
            ``md["top:sub.runStartCpuTime"]``.
        """
        fullMetadata = TaskMetadata()
        for fullName, task in self._taskDict.items():
            fullMetadata[fullName.replace(".", ":")] = task.metadata
        return fullMetadata

    def emptyMetadata(self) -> None:
        """Give every task in the tree a new, empty `TaskMetadata`.

        Containers returned earlier by `getFullMetadata` keep the old data.
        """
        for task in self._taskDict.values():
            task.metadata = TaskMetadata()

    # -- schema catalogs ------------------------------------------------------

    def getSchemaCatalogs(self) -> dict[str, Any]:
        """Return the empty catalogs describing this task's output schemas.

        Returns
        -------
        catalogs : `dict` [`str`, `object`]
            Dataset name to an *empty* catalog (e.g. an `astropy.table.Table`
            with the output columns), known at construction time. The
            default is ``{}``; tasks that write catalogs override this.

        Notes
        -----
        Removed from ``lsst.pipe.base`` in v25; kept here for the older API.
        """
        return {}

    def getAllSchemaCatalogs(self) -> dict[str, Any]:
        """Return the schema catalogs of every task in the tree.

        Returns
        -------
        catalogs : `dict` [`str`, `object`]
            `getSchemaCatalogs` merged over the shared registry in creation
            order (a later task wins a name clash); the same from any node.
        """
        catalogs: dict[str, Any] = {}
        for task in self._taskDict.values():
            catalogs.update(task.getSchemaCatalogs())
        return catalogs

    # -- timing -------------------------------------------------------------

    @contextlib.contextmanager
    def timer(self, name: str, logLevel: int = logging.DEBUG) -> Iterator[None]:
        """Record resource usage around a block of code.

        Writes the `lsst.utils.timer.logInfo` items with prefix
        ``<name>Start`` on entry and ``<name>End`` on exit (also when the
        block raises) to ``self.metadata``, and logs them to the logger
        ``timer.<self.log.name>``.

        Parameters
        ----------
        name : `str`
            Prefix of the metadata items, e.g. ``"convolve"`` gives
            ``convolveStartCpuTime`` ... ``convolveEndUtc``.
        logLevel : `int`, optional
            `logging` level of the log records (default `logging.DEBUG`).

        Yields
        ------
        None
        """
        logInfo(obj=self, prefix=name + "Start", logLevel=logLevel)
        try:
            yield
        finally:
            logInfo(obj=self, prefix=name + "End", logLevel=logLevel)

    # -- pickling -------------------------------------------------------------

    def _reduce_kwargs(self) -> dict[str, Any]:
        """Return the constructor keyword arguments used for pickling.

        Returns
        -------
        kwargs : `dict` [`str`, `object`]
            ``config``, ``name`` and ``parentTask``. Subclasses whose
            constructor takes more arguments extend this dictionary.
        """
        parent = self._parentTask() if self._parentTask is not None else None
        return dict(config=self.config, name=self._name, parentTask=parent)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by re-constructing the task from `_reduce_kwargs`.

        The rebuilt task has fresh metadata; its subtasks are rebuilt by its
        constructor. The ``log`` argument is not preserved.
        """
        return (_rebuildTask, (type(self), self._reduce_kwargs()))
