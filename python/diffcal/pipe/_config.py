"""The single gateway to the external configuration and timing framework.

Every ``lsst.pex.config`` and ``lsst.utils`` name that diffcal uses is
imported here and nowhere else, so the framework can later be replaced by
rewriting this one module without touching algorithm code.

Re-exported names
-----------------
From `lsst.pex.config`: ``Config``, ``Field``, ``RangeField``,
``ChoiceField``, ``ListField``, ``DictField``, ``ConfigField``,
``ConfigChoiceField``, ``ConfigDictField``, ``ConfigurableField``,
``RegistryField``, ``makeRegistry``, ``registerConfigurable``,
``FieldValidationError`` and ``ConfigurableInstance`` (the type of a
ConfigurableField's value, a proxy of the sub-config).

From `lsst.utils`: ``timeMethod`` (`lsst.utils.timer.timeMethod`, so the
metadata keys it writes are exactly the LSST ones, e.g. ``runStartCpuTime``,
``runEndUtc``, ``__version__``, ``nodeName``), ``logInfo``
(`lsst.utils.timer.logInfo`, used by `Task.timer`) and ``getLogger``
(`lsst.utils.logging.getLogger`, which returns an ``LsstLogAdapter``, also
re-exported, with ``verbose()`` and ``trace()``).
"""

from __future__ import annotations

from lsst.pex.config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigDictField,
    ConfigField,
    ConfigurableField,
    ConfigurableInstance,
    DictField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
    RegistryField,
    makeRegistry,
    registerConfigurable,
)
from lsst.utils.logging import LsstLogAdapter, getLogger
from lsst.utils.timer import logInfo, timeMethod

__all__ = [
    "ChoiceField",
    "Config",
    "ConfigChoiceField",
    "ConfigDictField",
    "ConfigField",
    "ConfigurableField",
    "ConfigurableInstance",
    "DictField",
    "Field",
    "FieldValidationError",
    "ListField",
    "LsstLogAdapter",
    "RangeField",
    "RegistryField",
    "getLogger",
    "logInfo",
    "makeRegistry",
    "registerConfigurable",
    "timeMethod",
]
