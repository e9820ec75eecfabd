"""A minimal data-repository protocol and `LocalRepository`, a directory implementation of it.

The command-line members of `diffcal.pipe.cmdline.CmdLineTaskMixin` and the ``runDataRef``/``runQuantum``
entry points of tasks talk to storage only through the small protocol below, which mirrors the part of
the LSST Gen2 butler (and Gen3 ``QuantumContext``) that those members use.

Repository protocol (`RepositoryProtocol`)
------------------------------------------
``get(datasetType, dataId=None, **dataIdExtra)``
    Return the stored object; raise `KeyError` (a `DatasetNotFoundError`) when there is none.
``put(obj, datasetType, dataId=None, *, doBackup=False, **dataIdExtra)``
    Store ``obj``, replacing any existing dataset; with ``doBackup`` the existing file is first renamed
    with a ``~N`` suffix (the smallest free ``N`` starting at 1), like the Gen2 butler.
``datasetExists(datasetType, dataId=None, **dataIdExtra)``
    `bool`.

A data ID is a mapping from key (``"visit"``, ``"detector"``...) to `int` or `str`; ``None`` or ``{}`` means
a dataset without data ID (configs, metadata of a whole run, package versions). Keyword arguments extend the
data ID.

Data references (`DataRef`): ``dataRef.dataId``, ``dataRef.get(datasetType, **extra)``,
``dataRef.put(obj, datasetType, **extra)``, ``dataRef.datasetExists(datasetType, **extra)`` and
``dataRef.getButler()``: a repository bound to one data ID.

Quantum context (`LocalQuantumContext`): ``get(refs)`` and ``put(obj, ref)`` on `DatasetRef` objects, where
``refs`` is a single `DatasetRef`, a list of them, or a `Struct`/mapping of either (the Gen3 ``InputQuantizedConnection``
shape); ``quantum.dataId`` is the quantum's data ID.

`LocalRepository` layout
------------------------
A dataset without data ID is the file ``<root>/<datasetType><ext>``; with a data ID it is
``<root>/<datasetType>/<key1>=<value1>,<key2>=<value2><ext>`` (keys sorted). The extension names the format
and is chosen at ``put`` time from the object's type (first matching `Formatter`, see `registerFormatter`):

=====================  ======================  =====================================================================
extension              Python type             contents
=====================  ======================  =====================================================================
``.py``                `lsst.pex.config.Config`  ``config.saveToString()`` after one comment line naming the class
                                               (``# diffcal-config-class: module.Class``) so ``get`` can rebuild it
``.metadata.json``     `TaskMetadata`          ``TaskMetadata.to_json``
``.packages.json``     package versions        JSON object name -> version (`lsst.utils.packages.Packages` when
                                               available, read back as one)
``.fits``              `astropy.table.Table`   a FITS binary table (schemas and catalogs; empty tables keep their
                                               columns and dtypes)
``.npz``               dict of numpy arrays    ``numpy.savez`` (column tables)
``.json``              JSON-able dict/list     ``json.dumps``
``.pickle``            anything else           ``pickle`` (only for trusted, local repositories)
=====================  ======================  =====================================================================

Other modules register formats for their own types (`diffcal.jointcal.repository` adds WCS, visit summaries
and cameras); registered formats are tried before the built-in ones, most recent first. Files are written
under a temporary name and renamed, so an interrupted ``put`` never leaves a half-written dataset.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._config import Config
from ._metadata import TaskMetadata
from ._struct import Struct

__all__ = [
    "DataRef",
    "DatasetNotFoundError",
    "DatasetRef",
    "Formatter",
    "LocalQuantumContext",
    "LocalRepository",
    "RepositoryProtocol",
    "registerFormatter",
]


class DatasetNotFoundError(KeyError):
    """No dataset of this type and data ID in the repository (a `KeyError`)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class RepositoryProtocol(Protocol):
    """What the command-line members need from a data repository (see the module docstring)."""

    def get(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> Any: ...

    def put(self, obj: Any, datasetType: str, dataId: Mapping[str, Any] | None = None, *, doBackup: bool = False,
            **dataIdExtra: Any) -> None: ...

    def datasetExists(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Formatter:
    """How one Python type is stored in a `LocalRepository`.

    Attributes
    ----------
    ext : `str`
        File extension including the dot(s), unique among formatters (e.g. ``".wcs.fits"``).
    accepts : callable
        ``accepts(obj) -> bool``: whether this formatter stores ``obj``.
    write : callable
        ``write(obj, path)``: write ``obj`` to ``path`` (a `pathlib.Path`).
    read : callable
        ``read(path) -> obj``.
    """

    ext: str
    accepts: Callable[[Any], bool]
    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


# -- built-in formats ----------------------------------------------------------------------------------------

_CONFIG_HEADER = "# diffcal-config-class: "


def _writeConfig(config: Config, path: Path) -> None:
    cls = type(config)
    text = config.saveToString()
    path.write_text(f"{_CONFIG_HEADER}{cls.__module__}.{cls.__qualname__}\n{text}")


def _readConfig(path: Path) -> Config:
    text = path.read_text()
    first = text.split("\n", 1)[0]
    if not first.startswith(_CONFIG_HEADER):
        raise ValueError(f"{path}: not a config written by LocalRepository (no {_CONFIG_HEADER.strip()!r} line)")
    moduleName, _, className = first[len(_CONFIG_HEADER):].strip().rpartition(".")
    cls = getattr(importlib.import_module(moduleName), className)
    config = cls()
    config.loadFromString(text, filename=str(path))
    return config


def _packagesClass() -> Any:
    try:
        from lsst.utils.packages import Packages
    except ImportError:  # pragma: no cover - lsst-utils is a dependency; kept for a minimal install
        return None
    return Packages


def _isPackages(obj: Any) -> bool:
    cls = _packagesClass()
    return (cls is not None and isinstance(obj, cls)) or isinstance(obj, PackageVersions)


class PackageVersions(dict):
    """Package name -> version string; stands in for `lsst.utils.packages.Packages` when it is missing."""

    def difference(self, other: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """Packages present in both with different versions: name -> (self version, other version)."""
        return {k: (self[k], other[k]) for k in self.keys() & other.keys() if self[k] != other[k]}

    def extra(self, other: Mapping[str, str]) -> dict[str, str]:
        """Packages in ``self`` but not in ``other``."""
        return {k: self[k] for k in self.keys() - other.keys()}


def _writePackages(obj: Mapping[str, str], path: Path) -> None:
    path.write_text(json.dumps(dict(sorted(obj.items())), indent=1) + "\n")


def _readPackages(path: Path) -> Any:
    data = json.loads(path.read_text())
    cls = _packagesClass()
    return cls(data) if cls is not None else PackageVersions(data)


def _isTable(obj: Any) -> bool:
    try:
        from astropy.table import Table
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Table)


def _writeTable(table: Any, path: Path) -> None:
    table.write(path, format="fits", overwrite=True)


def _readTable(path: Path) -> Any:
    from astropy.table import Table

    table = Table.read(path, format="fits", character_as_bytes=False)
    for name in table.colnames:  # FITS is big-endian; hand back native byte order
        dtype = table[name].dtype
        if dtype.byteorder not in ("=", "|") and dtype.newbyteorder("=") != dtype:
            table[name] = table[name].astype(dtype.newbyteorder("="))
    return table


def _isColumnDict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _writeNpz(obj: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **obj)


def _readNpz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _isJsonable(obj: Any) -> bool:
    if not isinstance(obj, (dict, list)):
        return False
    try:
        return json.loads(json.dumps(obj)) == obj
    except (TypeError, ValueError):
        return False


def _writePickle(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _readPickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


_BUILTIN: list[Formatter] = [
    Formatter(".py", lambda o: isinstance(o, Config), _writeConfig, _readConfig),
    Formatter(".metadata.json", lambda o: isinstance(o, TaskMetadata), lambda o, p: p.write_text(o.to_json(indent=1)),
              lambda p: TaskMetadata.from_json(p.read_text())),
    Formatter(".packages.json", _isPackages, _writePackages, _readPackages),
    Formatter(".fits", _isTable, _writeTable, _readTable),
    Formatter(".npz", _isColumnDict, _writeNpz, _readNpz),
    Formatter(".json", _isJsonable, lambda o, p: p.write_text(json.dumps(o, indent=1) + "\n"),
              lambda p: json.loads(p.read_text())),
    Formatter(".pickle", lambda o: True, _writePickle, _readPickle),
]
_REGISTERED: list[Formatter] = []


def registerFormatter(formatter: Formatter) -> None:
    """Add a storage format for `LocalRepository`; it takes precedence over earlier and built-in ones.

    Registering a formatter with an extension that is already registered replaces the old one.

    Raises
    ------
    ValueError
        ``formatter.ext`` does not start with ``"."`` or is the extension of a built-in format.
    """
    if not formatter.ext.startswith(".") or len(formatter.ext) < 2:
        raise ValueError(f"formatter extension must start with '.', got {formatter.ext!r}")
    if any(f.ext == formatter.ext for f in _BUILTIN):
        raise ValueError(f"extension {formatter.ext!r} is used by a built-in format")
    _REGISTERED[:] = [f for f in _REGISTERED if f.ext != formatter.ext]
    _REGISTERED.insert(0, formatter)


def _formatters() -> list[Formatter]:
    return _REGISTERED + _BUILTIN


# -- repository ----------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def _mergeDataId(dataId: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(dataId or {})
    merged.update(extra)
    return merged


class LocalRepository:
    """A data repository in one directory (see the module docstring for the file layout and formats).

    Parameters
    ----------
    root : path-like
        Directory; created on the first ``put``.
    parents : sequence of repositories, optional
        Read-only repositories (any object with ``get``/``datasetExists``) consulted in order by ``get`` and
        ``datasetExists`` when this one does not hold the dataset, like the parents of a Gen2 output
        repository. ``put`` always writes here.
    """

    def __init__(self, root: Any, parents: Sequence[Any] = ()) -> None:
        self.root = Path(root)
        self.parents = list(parents)

    def __repr__(self) -> str:
        return f"LocalRepository({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------------------------

    def _base(self, datasetType: str, dataId: Mapping[str, Any]) -> Path:
        if not isinstance(datasetType, str) or not _KEY_RE.match(datasetType):
            raise ValueError(f"invalid dataset type {datasetType!r}: need a Python-identifier-like name")
        if not dataId:
            return self.root / datasetType
        parts = []
        for key in sorted(dataId):
            value = dataId[key]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str)):
                raise TypeError(f"data ID value {key}={value!r} must be an int or a str")
            text = str(int(value)) if isinstance(value, (int, np.integer)) else value
            if not _KEY_RE.match(key) or not _VALUE_RE.match(text):
                raise ValueError(f"data ID item {key}={value!r} cannot be used in a file name")
            parts.append(f"{key}={text}")
        return self.root / datasetType / ",".join(parts)

    def _existing(self, datasetType: str, dataId: Mapping[str, Any]) -> tuple[Path, Formatter] | None:
        base = self._base(datasetType, dataId)
        # longest extension first, so ".wcs.fits" is not taken for ".fits"
        for fmt in sorted(_formatters(), key=lambda f: -len(f.ext)):
            path = base.with_name(base.name + fmt.ext)
            if path.is_file():
                return path, fmt
        return None

    def path(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> Path | None:
        """The file of a dataset in this repository (not its parents), or None."""
        found = self._existing(datasetType, _mergeDataId(dataId, dataIdExtra))
        return None if found is None else found[0]

    # -- protocol --------------------------------------------------------------------------------------------

    def datasetExists(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> bool:
        """Whether the dataset is stored here or in a parent repository."""
        merged = _mergeDataId(dataId, dataIdExtra)
        if self._existing(datasetType, merged) is not None:
            return True
        return any(p.datasetExists(datasetType, merged) for p in self.parents)

    def get(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> Any:
        """Read a dataset (here first, then the parents in order).

        Raises
        ------
        DatasetNotFoundError
            (a `KeyError`) when no repository holds it.
        """
        merged = _mergeDataId(dataId, dataIdExtra)
        found = self._existing(datasetType, merged)
        if found is not None:
            path, fmt = found
            return fmt.read(path)
        for parent in self.parents:
            if parent.datasetExists(datasetType, merged):
                return parent.get(datasetType, merged)
        raise DatasetNotFoundError(f"no dataset {datasetType!r} with data ID {merged} in {self.root}")

    def put(self, obj: Any, datasetType: str, dataId: Mapping[str, Any] | None = None, *, doBackup: bool = False,
            **dataIdExtra: Any) -> Path:
        """Write a dataset here, replacing an existing one (kept as ``<file>~N`` if ``doBackup``).

        Returns
        -------
        path : `pathlib.Path`
            The file written.
        """
        merged = _mergeDataId(dataId, dataIdExtra)
        base = self._base(datasetType, merged)
        fmt = next(f for f in _formatters() if f.accepts(obj))
        path = base.with_name(base.name + fmt.ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        old = self._existing(datasetType, merged)
        tmp = path.with_name(path.name + ".tmp")
        try:
            fmt.write(obj, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if old is not None:
            oldPath = old[0]
            if doBackup:
                n = 1
                while oldPath.with_name(f"{oldPath.name}~{n}").exists():
                    n += 1
                os.replace(oldPath, oldPath.with_name(f"{oldPath.name}~{n}"))
            elif oldPath != path:
                oldPath.unlink()
        os.replace(tmp, path)
        return path

    def backups(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> list[Path]:
        """Backup files (``~1``, ``~2``, ...) of a dataset, in order."""
        base = self._base(datasetType, _mergeDataId(dataId, dataIdExtra))
        if not base.parent.is_dir():
            return []
        pattern = re.compile(re.escape(base.name) + r"\.[A-Za-z.]+~(\d+)$")
        found = [(int(m.group(1)), p) for p in base.parent.iterdir() if (m := pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def dataRef(self, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> DataRef:
        """A `DataRef` bound to ``dataId`` in this repository."""
        return DataRef(self, _mergeDataId(dataId, dataIdExtra))


class DataRef:
    """A repository bound to one data ID (the Gen2 ``ButlerDataRef`` subset that tasks use).

    Parameters
    ----------
    butler : repository
        Any object implementing `RepositoryProtocol`.
    dataId : mapping
        The data ID; extra keywords of ``get``/``put``/``datasetExists`` extend it (e.g. ``detector=3`` on a
        per-visit reference).
    """

    def __init__(self, butler: Any, dataId: Mapping[str, Any]) -> None:
        self.butlerSubset = Struct(butler=butler)
        self.dataId = dict(dataId)

    def __repr__(self) -> str:
        return f"DataRef({self.dataId})"

    def getButler(self) -> Any:
        """The repository."""
        return self.butlerSubset.butler

    def get(self, datasetType: str, **dataIdExtra: Any) -> Any:
        return self.getButler().get(datasetType, _mergeDataId(self.dataId, dataIdExtra))

    def put(self, obj: Any, datasetType: str, *, doBackup: bool = False, **dataIdExtra: Any) -> Any:
        return self.getButler().put(obj, datasetType, _mergeDataId(self.dataId, dataIdExtra), doBackup=doBackup)

    def datasetExists(self, datasetType: str, **dataIdExtra: Any) -> bool:
        return bool(self.getButler().datasetExists(datasetType, _mergeDataId(self.dataId, dataIdExtra)))


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """One dataset of a quantum: its type and data ID (``dataId`` is a plain dict)."""

    datasetType: str
    dataId: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class LocalQuantumContext:
    """A Gen3-``QuantumContext``-like view of a repository for ``runQuantum``.

    Parameters
    ----------
    butler : repository
        Any object implementing `RepositoryProtocol`.
    dataId : mapping, optional
        The quantum's data ID (``quantum.dataId``), e.g. ``{"tract": 9813}``.
    """

    def __init__(self, butler: Any, dataId: Mapping[str, Any] | None = None) -> None:
        self.butler = butler
        self.quantum = Struct(dataId=dict(dataId or {}))

    def get(self, refs: Any) -> Any:
        """Read datasets.

        ``refs`` may be a `DatasetRef` (-> the object), a list/tuple of them (-> a list), or a `Struct` or
        mapping of either (-> a ``dict`` with the same names, ``None`` entries kept as ``None``).
        """
        if refs is None:
            return None
        if isinstance(refs, DatasetRef):
            return self.butler.get(refs.datasetType, refs.dataId)
        if isinstance(refs, (list, tuple)):
            return [self.get(r) for r in refs]
        if isinstance(refs, Struct):
            refs = refs.getDict()
        if isinstance(refs, Mapping):
            return {name: self.get(r) for name, r in refs.items()}
        raise TypeError(f"cannot get datasets from a {type(refs).__name__}; expected DatasetRef(s)")

    def put(self, obj: Any, ref: DatasetRef) -> None:
        """Write one dataset."""
        if not isinstance(ref, DatasetRef):
            raise TypeError(f"put needs a DatasetRef, got {type(ref).__name__}")
        self.butler.put(obj, ref.datasetType, ref.dataId)
