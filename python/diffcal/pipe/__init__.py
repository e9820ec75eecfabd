"""Task/Config framework: `Task`, `Struct`, `TaskMetadata` and config fields.

Algorithm code imports every framework name from here. The config classes,
`timeMethod` and `getLogger` are those of ``lsst.pex.config`` and
``lsst.utils``, re-exported through the single module ``diffcal.pipe._config``;
`Task`, `TaskError`, `Struct` and `TaskMetadata` are diffcal's own.
"""

from __future__ import annotations

from ._config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigDictField,
    ConfigField,
    ConfigurableField,
    DictField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
    RegistryField,
    getLogger,
    makeRegistry,
    registerConfigurable,
    timeMethod,
)
from ._metadata import TaskMetadata
from ._struct import Struct
from ._task import Task, TaskError

__all__ = [
    "ChoiceField",
    "Config",
    "ConfigChoiceField",
    "ConfigDictField",
    "ConfigField",
    "ConfigurableField",
    "DictField",
    "Field",
    "FieldValidationError",
    "ListField",
    "RangeField",
    "RegistryField",
    "Struct",
    "Task",
    "TaskError",
    "TaskMetadata",
    "getLogger",
    "makeRegistry",
    "registerConfigurable",
    "timeMethod",
]
