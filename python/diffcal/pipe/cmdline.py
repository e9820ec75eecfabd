"""`CmdLineTaskMixin`: the command-line members of the LSST Gen2 ``CmdLineTask`` on a local repository.

The reference's ``CmdLineTask`` (removed from ``lsst.pipe.base`` in v25) gave a task a class method
``parseAndRun`` that parsed a command line, ran the task on each data reference and recorded, in the output
repository, the configuration, the schemas of the output catalogs, the versions of the software packages and
the task metadata. This mixin provides the same members over the minimal repository protocol of
`diffcal.pipe.repository` (``get``/``put``/``datasetExists``), so they work with a `LocalRepository` directory
and with any object that implements the three methods.

Dataset names (as in the reference):

* ``<_DefaultName>_config``: the task configuration (``writeConfig``);
* ``<_DefaultName>_metadata``: ``getFullMetadata()`` (``writeMetadata``, through a data reference);
* ``packages``: package name -> version (``writePackageVersions``);
* ``<name>_schema``: one empty catalog per item of ``getAllSchemaCatalogs()`` (``writeSchemas``).

A subclass that wants ``parseAndRun`` implements three hooks: ``_makeArgumentParser()`` (an
`argparse.ArgumentParser`), ``_makeRepositories(parsedCmd)`` (the output repository) and
``_getTargetList(parsedCmd, butler)`` (the list of ``(dataRef, kwargs)`` to pass to ``runDataRef``), plus
``runDataRef`` itself. The framework options below are added to its parser.

Framework options added by ``parseAndRun``: ``--clobber-config`` (replace a different stored config instead
of failing), ``--clobber-versions`` (same for package versions), ``--no-backup-config`` (do not keep ``~N``
copies of replaced records), ``--no-versions`` (do not record package versions) and ``--doraise`` (let an
exception in ``runDataRef`` propagate instead of logging it and recording exit status 1).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
from typing import Any

from ._struct import Struct
from ._task import TaskError

__all__ = ["CmdLineTaskMixin", "addCmdLineOptions", "getPackageVersions"]


def getPackageVersions() -> Any:
    """Versions of the software in use.

    Returns
    -------
    packages : `lsst.utils.packages.Packages` or `diffcal.pipe.repository.PackageVersions`
        ``Packages.fromSystem()`` (the imported Python packages, conda and EUPS products) when
        ``lsst.utils.packages`` is importable, else name -> version of diffcal and its direct dependencies
        from `importlib.metadata`. ``diffcal`` itself is always included.
    """
    try:
        from lsst.utils.packages import Packages
    except ImportError:  # pragma: no cover - lsst-utils is a dependency
        from .repository import PackageVersions

        versions = PackageVersions()
        for dist in ("diffcal", "numpy", "scipy", "astropy", "lsst-pex-config", "lsst-utils", "pyarrow"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return versions
    packages = Packages.fromSystem()
    try:
        packages["diffcal"] = importlib.metadata.version("diffcal")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        pass
    return packages


def addCmdLineOptions(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the framework options (see the module docstring) to ``parser``; returns ``parser``."""
    group = parser.add_argument_group("task framework")
    group.add_argument("--clobber-config", dest="clobberConfig", action="store_true",
                       help="replace a stored config that differs from this one (default: fail)")
    group.add_argument("--clobber-versions", dest="clobberVersions", action="store_true",
                       help="replace stored package versions that differ from these (default: fail)")
    group.add_argument("--no-backup-config", dest="noBackupConfig", action="store_true",
                       help="do not keep ~N backups of replaced config and version records")
    group.add_argument("--no-versions", dest="noVersions", action="store_true",
                       help="do not record or check package versions")
    group.add_argument("--doraise", action="store_true",
                       help="raise an exception in runDataRef instead of logging it and continuing")
    return parser


class CmdLineTaskMixin:
    """Command-line members for a `diffcal.pipe.Task` subclass (put the mixin first in the bases).

    See the module docstring for the dataset names and for the hooks ``parseAndRun`` needs.
    """

    # -- names -------------------------------------------------------------------------------------------------

    def _getConfigName(self) -> str | None:
        """Dataset name of the config record: ``<_DefaultName>_config`` (None: not recorded)."""
        name = getattr(self, "_DefaultName", None)
        return None if name is None else f"{name}_config"

    def _getMetadataName(self) -> str | None:
        """Dataset name of the metadata record: ``<_DefaultName>_metadata`` (None: not recorded)."""
        name = getattr(self, "_DefaultName", None)
        return None if name is None else f"{name}_metadata"

    # -- records -------------------------------------------------------------------------------------------------

    def writeConfig(self, butler: Any, clobber: bool = False, doBackup: bool = True) -> None:
        """Record the configuration as ``<_DefaultName>_config``, or check it against the stored one.

        Parameters
        ----------
        butler : repository
            Implements ``get``/``put``/``datasetExists`` (`diffcal.pipe.repository`).
        clobber : `bool`
            Write the config even if a different one is stored.
        doBackup : `bool`
            With ``clobber``, keep the replaced record as a ``~N`` backup.

        Raises
        ------
        diffcal.pipe.TaskError
            A config is stored, differs from ``self.config`` (``Config.compare``, float-tolerant) and
            ``clobber`` is False. The differences are logged at ERROR level.
        Exception
            The stored config cannot be read (re-raised as the same type with a hint).
        """
        configName = self._getConfigName()
        if configName is None:
            return
        config = self.config  # type: ignore[attr-defined]
        oldConfig = _putOrGetStored(butler, config, configName, clobber, doBackup,
                                    "Unable to read stored config {name!r} ({exc}); consider using --clobber-config")
        if oldConfig is None:
            return
        differences: list[str] = []
        if not config.compare(oldConfig, shortcut=False, output=differences.append):
            for message in differences:
                self.log.error("Comparing configuration: %s", message)  # type: ignore[attr-defined]
            raise TaskError(f"Config does not match the existing task config {configName!r} in the output "
                            f"repository ({len(differences)} difference(s), first: {differences[:1]}); task "
                            "configurations must be consistent within one output repository (override with "
                            "--clobber-config)")

    def writeSchemas(self, butler: Any, clobber: bool = False, doBackup: bool = True) -> None:
        """Record the empty catalog of each ``getAllSchemaCatalogs()`` item as ``<name>_schema``.

        A stored schema is compared column by column (names, dtypes, shapes, units); a difference raises
        `diffcal.pipe.TaskError` unless ``clobber`` (then it is replaced, backed up with ``doBackup``).
        """
        for dataset, catalog in self.getAllSchemaCatalogs().items():  # type: ignore[attr-defined]
            schemaDataset = f"{dataset}_schema"
            if clobber:
                butler.put(catalog, schemaDataset, doBackup=doBackup)
            elif butler.datasetExists(schemaDataset):
                old = butler.get(schemaDataset)
                if _schemaOf(old) != _schemaOf(catalog):
                    raise TaskError(f"New schema does not match the schema {schemaDataset!r} in the output "
                                    f"repository: {_schemaOf(catalog)} vs stored {_schemaOf(old)} (override "
                                    "with --clobber-config)")
            else:
                butler.put(catalog, schemaDataset)

    def writeMetadata(self, dataRef: Any) -> None:
        """Record ``getFullMetadata()`` as ``<_DefaultName>_metadata`` through ``dataRef.put``.

        Like the reference, a failure is logged as a warning and does not raise.
        """
        try:
            metadataName = self._getMetadataName()
            if metadataName is not None:
                dataRef.put(self.getFullMetadata(), metadataName)  # type: ignore[attr-defined]
        except Exception as exc:
            self.log.warning("Could not persist metadata for dataId=%s: %s",  # type: ignore[attr-defined]
                             getattr(dataRef, "dataId", None), exc)

    def writePackageVersions(self, butler: Any, clobber: bool = False, doBackup: bool = True,
                             dataset: str = "packages") -> None:
        """Record the software versions (`getPackageVersions`) as ``dataset``, or check the stored record.

        Only the packages present in both records are compared (the set of imported packages varies); when
        they agree, packages missing from the stored record are added to it (with a ``~N`` backup if
        ``doBackup``).

        Raises
        ------
        diffcal.pipe.TaskError
            A package has a different version in the stored record and ``clobber`` is False. The message
            lists ``name: stored vs current`` for each.
        """
        packages = getPackageVersions()
        old = _putOrGetStored(butler, packages, dataset, clobber, doBackup,
                              "Unable to read stored version dataset {name!r} ({exc}); "
                              "consider using --clobber-versions or --no-versions")
        if old is None:
            return
        diff = {k: (packages[k], old[k]) for k in sorted(packages.keys() & old.keys()) if packages[k] != old[k]}
        if diff:
            text = "; ".join(f"{name}: {stored} vs {current}" for name, (current, stored) in diff.items())
            raise TaskError(f"Version mismatch ({text}); consider using --clobber-versions")
        extra = {k: packages[k] for k in packages.keys() - old.keys()}
        if extra:
            old.update(extra)
            butler.put(old, dataset, doBackup=doBackup)

    # -- command line ----------------------------------------------------------------------------------------

    @classmethod
    def _makeArgumentParser(cls) -> argparse.ArgumentParser:
        """The task's argument parser (hook; see the module docstring)."""
        raise NotImplementedError(f"{cls.__name__} does not define a command line (_makeArgumentParser)")

    @classmethod
    def _applyOverrides(cls, config: Any, parsedCmd: argparse.Namespace) -> None:
        """Apply command-line config files and overrides to ``config`` (hook; default: nothing)."""

    @classmethod
    def _makeRepositories(cls, parsedCmd: argparse.Namespace) -> Any:
        """The output repository for ``parsedCmd`` (hook)."""
        raise NotImplementedError(f"{cls.__name__} does not define its repositories (_makeRepositories)")

    @classmethod
    def _getTargetList(cls, parsedCmd: argparse.Namespace, butler: Any) -> list[tuple[Any, dict[str, Any]]]:
        """``[(dataRef(s), kwargs), ...]``: one ``runDataRef`` call per item (hook)."""
        raise NotImplementedError(f"{cls.__name__} does not define its targets (_getTargetList)")

    @staticmethod
    def _metadataRef(target: Any) -> Any:
        """The data reference through which the metadata of a target is written (first of a list)."""
        if isinstance(target, (list, tuple)):
            return target[0] if target else None
        return target

    @classmethod
    def parseAndRun(cls, args: list[str] | None = None, config: Any = None, log: Any = None,
                    doReturnResults: bool = False) -> Struct:
        """Parse a command line, record config, schemas and versions, and run ``runDataRef`` on each target.

        Parameters
        ----------
        args : `list` [`str`], optional
            Command-line arguments (default ``sys.argv[1:]``), those of the task's parser plus the framework
            options of `addCmdLineOptions`. A parse error exits with status 2 (`SystemExit`), as argparse does.
        config : `lsst.pex.config.Config`, optional
            Starting configuration (default ``ConfigClass()``); it is copied, then the command-line config
            files and overrides are applied and the result validated.
        log : `logging.Logger`, optional
            Parent logger of the task.
        doReturnResults : `bool`
            Include each target's ``runDataRef`` result and metadata in ``resultList``.

        Returns
        -------
        result : `diffcal.pipe.Struct`
            ``argumentParser``; ``parsedCmd`` (the `argparse.Namespace`, with ``config`` and ``butler`` added);
            ``taskRunner``: None (targets run serially in this process); ``resultList``: one `Struct` per
            target with ``exitStatus`` (0, or 1 if ``runDataRef`` raised and ``--doraise`` was not given) and,
            with ``doReturnResults``, ``dataRef``, ``metadata`` (``task.metadata``) and ``result``.

        Raises
        ------
        diffcal.pipe.TaskError
            Stored config, schemas or package versions differ and no clobber option was given.
        """
        parser = addCmdLineOptions(cls._makeArgumentParser())
        parsedCmd = parser.parse_args(args)
        config = cls.ConfigClass() if config is None else config.copy()  # type: ignore[attr-defined]
        cls._applyOverrides(config, parsedCmd)
        config.validate()
        parsedCmd.config = config
        butler = cls._makeRepositories(parsedCmd)
        parsedCmd.butler = butler
        task = cls(config=config, log=log)  # type: ignore[call-arg]
        doBackup = not parsedCmd.noBackupConfig
        task.writeConfig(butler, clobber=parsedCmd.clobberConfig, doBackup=doBackup)
        task.writeSchemas(butler, clobber=parsedCmd.clobberConfig, doBackup=doBackup)
        if not parsedCmd.noVersions:
            task.writePackageVersions(butler, clobber=parsedCmd.clobberVersions, doBackup=doBackup)
        resultList = []
        for target, kwargs in cls._getTargetList(parsedCmd, butler):
            exitStatus = 0
            result = None
            try:
                result = task.runDataRef(target, **kwargs)  # type: ignore[attr-defined]
            except Exception as exc:
                if parsedCmd.doraise:
                    raise
                exitStatus = 1
                task.log.log(logging.CRITICAL, "Failed on dataId=%s: %s: %s",  # type: ignore[attr-defined]
                             getattr(cls._metadataRef(target), "dataId", None), type(exc).__name__, exc)
            ref = cls._metadataRef(target)
            if ref is not None:
                task.writeMetadata(ref)
            item = Struct(exitStatus=exitStatus)
            if doReturnResults:
                item.dataRef = target
                item.metadata = task.metadata  # type: ignore[attr-defined]
                item.result = result
            resultList.append(item)
        return Struct(argumentParser=parser, parsedCmd=parsedCmd, taskRunner=None, resultList=resultList)


def _putOrGetStored(butler: Any, obj: Any, name: str, clobber: bool, doBackup: bool, hint: str) -> Any:
    """Store ``obj`` as ``name`` when clobbering (with a backup if asked) or when nothing is stored yet,
    and return None; otherwise return the stored object for comparison. An unreadable stored object
    re-raises its error with ``hint`` (formatted with ``name`` and ``exc``)."""
    if clobber:
        butler.put(obj, name, doBackup=doBackup)
        return None
    if not butler.datasetExists(name):
        butler.put(obj, name)
        return None
    try:
        return butler.get(name)
    except Exception as exc:
        raise _withHint(exc, hint.format(name=name, exc=exc)) from exc


def _withHint(exc: Exception, message: str) -> Exception:
    """An exception of the same type as ``exc`` with ``message`` (a RuntimeError if the type needs other
    constructor arguments)."""
    try:
        return type(exc)(message)
    except Exception:
        return RuntimeError(message)


def _schemaOf(catalog: Any) -> list[tuple[str, str, tuple[int, ...], str]]:
    """Comparable description of a catalog's columns: (name, dtype, per-row shape, unit)."""
    columns = getattr(catalog, "columns", None)
    if columns is None:
        raise TypeError(f"schema catalog must be a table with columns, got {type(catalog).__name__}")
    out = []
    for name in columns:
        col = catalog[name]
        unit = getattr(col, "unit", None)
        out.append((str(name), str(col.dtype.newbyteorder("=")), tuple(col.shape[1:]),
                    "" if unit is None else str(unit)))
    return out
