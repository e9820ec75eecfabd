"""`TaskMetadata`: a hierarchical container of primitive metadata values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["TaskMetadata"]

Scalar = str | float | int | bool
"""The leaf types a metadata item may hold (exactly these types)."""

_SCALAR_TYPES: tuple[type, ...] = (str, float, int, bool)


def _coerceScalar(value: Any, key: str) -> Scalar:
    """Return ``value`` as an exact `str`, `float`, `int` or `bool`.

    Numpy scalars are converted to the matching Python type; anything else
    that is not exactly one of the four types raises `ValueError`.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) in _SCALAR_TYPES:
        return value
    raise ValueError(
        f"Metadata item {key!r}: value {value!r} of type {type(value).__name__} is not allowed; "
        "use str, float, int, bool, a list of one of those, or a mapping"
    )


def _coerceList(values: list | tuple, key: str) -> list[Scalar]:
    """Return a new list of coerced scalars that all share one type."""
    items = []
    for item in values:
        if isinstance(item, (list, tuple, np.ndarray, Mapping)):
            raise ValueError(
                f"Metadata item {key!r}: list element {item!r} is not a scalar; lists cannot nest"
            )
        items.append(_coerceScalar(item, key))
    types = sorted({type(item).__name__ for item in items})
    if len(types) > 1:
        raise ValueError(f"Metadata item {key!r}: list {values!r} mixes element types {', '.join(types)}")
    return items


def _sameLeaf(a: Any, b: Any) -> bool:
    """Compare two leaf values strictly by type; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class TaskMetadata:
    """Hierarchical, dict-like container for task metadata.

    Items are addressed by keys; a dot in a key means nesting, so
    ``md["a.b.c"] = 3`` creates (or walks) nested containers ``a`` and
    ``a.b`` and stores ``c`` in the latter. Each key holds exactly one of:

    * a scalar: exactly `str`, `float`, `int` or `bool` (numpy scalars are
      converted to the Python type; subclasses such as enums are refused);
    * an array: a `list` (a `tuple` is accepted and stored as a list) whose
      elements all have the same one of those four types;
    * a nested `TaskMetadata`: assigning any other `~collections.abc.Mapping`
      stores a new nested container built from it, while assigning a
      `TaskMetadata` stores that very object (a live reference).

    Assigning a key replaces whatever it held before. ``md[key]`` returns
    the last element of an array, `getArray` always returns a list, and
    `add` appends, turning a scalar into an array.

    Parameters
    ----------
    data : `~collections.abc.Mapping`, optional
        Initial content, stored as by `from_dict`.

    Raises
    ------
    ValueError
        On assignment of a disallowed value: `None`, a numpy array (convert
        it with ``.tolist()``), a list mixing element types or containing
        non-scalars, or any other object.
    KeyError
        For a key that is not a non-empty `str` made of non-empty
        dot-separated parts, for a missing key, or when a key would need to
        nest below an existing scalar or array.

    Notes
    -----
    This re-implements the API of ``lsst.pipe.base.TaskMetadata`` without
    pydantic. Differences: `to_json`/`from_json` use the plain nested
    layout of `to_dict` (not pydantic's ``scalars``/``arrays``/``metadata``
    layout); equality compares types strictly (``1 != 1.0 != True``) and
    treats NaN as equal to NaN, so JSON round trips compare equal;
    `paramNames` requires its argument.
    The class is registered as a virtual `~collections.abc.Mapping`.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Scalar | list[Scalar] | TaskMetadata] = {}
        if data is not None:
            for key, value in self._checkedMapping(data).items():
                self[key] = value

    # -- key handling -----------------------------------------------------

    @staticmethod
    def _checkedMapping(data: Any) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise TypeError(f"Expected a mapping of metadata items, got {type(data).__name__}: {data!r}")
        return data

    @staticmethod
    def _splitKey(key: Any) -> list[str]:
        if not isinstance(key, str):
            raise KeyError(f"Invalid metadata key {key!r}: keys must be str")
        parts = key.split(".")
        if not all(parts):
            raise KeyError(f"Invalid metadata key {key!r}: empty name component")
        return parts

    def _locate(self, key: Any, create: bool) -> tuple[TaskMetadata, str]:
        """Return the container holding ``key`` and the key's last part.

        With ``create``, missing intermediate containers are created.
        """
        parts = self._splitKey(key)
        node = self
        for depth, part in enumerate(parts[:-1]):
            child = node._items.get(part)
            if child is None:
                if not create:
                    raise KeyError(key)
                child = TaskMetadata()
                node._items[part] = child
            elif not isinstance(child, TaskMetadata):
                prefix = ".".join(parts[: depth + 1])
                raise KeyError(f"Metadata key {key!r}: {prefix!r} holds a value, not nested metadata")
            node = child
        return node, parts[-1]

    def _lookup(self, key: Any) -> Scalar | list[Scalar] | TaskMetadata:
        """Return the raw stored value (arrays as the stored list)."""
        node, leaf = self._locate(key, create=False)
        try:
            return node._items[leaf]
        except KeyError:
            raise KeyError(key) from None

    # -- mapping protocol ---------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, TaskMetadata):
            stored: Scalar | list[Scalar] | TaskMetadata = value
        elif isinstance(value, Mapping):
            stored = TaskMetadata(value)
        elif isinstance(value, np.ndarray):
            raise ValueError(
                f"Metadata item {key!r}: numpy arrays are not allowed (got shape {value.shape}); "
                "convert with .tolist()"
            )
        elif isinstance(value, (list, tuple)):
            stored = _coerceList(value, key)
        else:
            stored = _coerceScalar(value, key)
        node, leaf = self._locate(key, create=True)
        node._items[leaf] = stored

    def __getitem__(self, key: str) -> Scalar | TaskMetadata:
        value = self._lookup(key)
        if isinstance(value, list):
            if not value:
                raise KeyError(f"Metadata item {key!r} is an empty array")
            return value[-1]
        return value

    def __delitem__(self, key: str) -> None:
        node, leaf = self._locate(key, create=False)
        try:
            del node._items[leaf]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        try:
            self._lookup(key)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> tuple[str, ...]:
        """Return the top-level keys.

        Returns
        -------
        keys : `tuple` [`str`, ...]
            Top-level keys in insertion order (not dotted paths).
        """
        return tuple(self._items)

    def items(self) -> list[tuple[str, Scalar | list[Scalar] | TaskMetadata]]:
        """Return the top-level ``(key, value)`` pairs.

        Returns
        -------
        items : `list` [`tuple`]
            Arrays appear as whole lists (copies), unlike ``md[key]`` which
            gives their last element; nested containers are live objects.
        """
        return [
            (key, list(value) if isinstance(value, list) else value) for key, value in self._items.items()
        ]

    def values(self) -> list[Scalar | list[Scalar] | TaskMetadata]:
        """Return the top-level values, as in `items`.

        Returns
        -------
        values : `list`
            Scalars, copies of arrays, and live nested containers.
        """
        return [value for _, value in self.items()]

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]``, or ``default`` if that raises `KeyError`.

        Parameters
        ----------
        key : `str`
            Possibly dotted key.
        default : `object`, optional
            Value returned when the key is absent (or an empty array).

        Returns
        -------
        value : `object`
            The scalar, last array element, nested container or default.
        """
        try:
            return self[key]
        except KeyError:
            return default

    # -- LSST-style accessors ----------------------------------------------

    def getScalar(self, key: str) -> Scalar | TaskMetadata:
        """Return the value of ``key``; for an array, its last element.

        Parameters
        ----------
        key : `str`
            Possibly dotted key.

        Returns
        -------
        value : `str`, `float`, `int`, `bool` or `TaskMetadata`
            Same as ``self[key]``.

        Raises
        ------
        KeyError
            If the key is absent or holds an empty array.
        """
        return self[key]

    def getArray(self, key: str) -> list[Any]:
        """Return the value of ``key`` as a list.

        Parameters
        ----------
        key : `str`
            Possibly dotted key.

        Returns
        -------
        values : `list`
            A copy of an array; a one-element list for a scalar or for a
            nested container (the live container).

        Raises
        ------
        KeyError
            If the key is absent.
        """
        value = self._lookup(key)
        return list(value) if isinstance(value, list) else [value]

    def add(self, name: str, value: Any) -> None:
        """Append a value (or each value of a list) to an item.

        A missing item becomes an array; a scalar becomes an array holding
        the old scalar followed by the new value(s).

        Parameters
        ----------
        name : `str`
            Possibly dotted key; missing intermediate containers are
            created.
        value : `str`, `float`, `int`, `bool` or `list` of one of those
            The value(s) to append. Numpy scalars are converted.

        Raises
        ------
        ValueError
            If the value is not allowed, if its type differs from the type
            of the existing elements, or if the item is a nested container.
        """
        if isinstance(value, (Mapping, TaskMetadata)):
            raise ValueError(
                f"Metadata item {name!r}: cannot add a mapping; assign it with md[{name!r}] = ..."
            )
        if isinstance(value, np.ndarray):
            raise ValueError(f"Metadata item {name!r}: numpy arrays are not allowed; convert with .tolist()")
        if isinstance(value, (list, tuple)):
            newItems = _coerceList(value, name)
        else:
            newItems = [_coerceScalar(value, name)]
        try:
            existing = self._lookup(name)
        except KeyError:
            self[name] = newItems
            return
        if isinstance(existing, TaskMetadata):
            raise ValueError(f"Metadata item {name!r} holds nested metadata; cannot add {value!r} to it")
        current = existing if isinstance(existing, list) else [existing]
        reference = current[0] if current else (newItems[0] if newItems else None)
        for item in newItems:
            if type(item) is not type(reference):
                raise ValueError(
                    f"Metadata item {name!r}: cannot add {item!r} of type {type(item).__name__} "
                    f"to values of type {type(reference).__name__}"
                )
        node, leaf = self._locate(name, create=False)
        if isinstance(existing, list):
            existing.extend(newItems)
        else:
            node._items[leaf] = current + newItems

    def names(self) -> set[str]:
        """Return every dotted name, including those of nested containers.

        Returns
        -------
        names : `set` [`str`]
            E.g. ``{"a", "a.b", "a.b.c"}`` after ``md["a.b.c"] = 1``.
        """
        result: set[str] = set()
        for key, value in self._items.items():
            result.add(key)
            if isinstance(value, TaskMetadata):
                result.update(f"{key}.{name}" for name in value.names())
        return result

    def paramNames(self, topLevelOnly: bool) -> set[str]:
        """Return the names of leaf items (scalars and arrays).

        Parameters
        ----------
        topLevelOnly : `bool`
            If `True`, only leaves at the top level; if `False`, the dotted
            names of all leaves in the hierarchy.

        Returns
        -------
        names : `set` [`str`]
            Names of nested containers themselves are never included.
        """
        result: set[str] = set()
        for key, value in self._items.items():
            if not isinstance(value, TaskMetadata):
                result.add(key)
            elif not topLevelOnly:
                result.update(f"{key}.{name}" for name in value.paramNames(False))
        return result

    # -- conversion ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the content as nested plain dictionaries.

        Returns
        -------
        data : `dict`
            Nested containers become `dict`, arrays new `list` objects.
        """
        result: dict[str, Any] = {}
        for key, value in self._items.items():
            if isinstance(value, TaskMetadata):
                result[key] = value.to_dict()
            elif isinstance(value, list):
                result[key] = list(value)
            else:
                result[key] = value
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskMetadata:
        """Build metadata from a (possibly nested) mapping.

        Parameters
        ----------
        data : `~collections.abc.Mapping`
            Keys are stored as by ``md[key] = value``, so a dotted key
            creates nesting.

        Returns
        -------
        metadata : `TaskMetadata`
            A new container.

        Raises
        ------
        TypeError
            If ``data`` is not a mapping.
        ValueError, KeyError
            As for item assignment.
        """
        return cls(cls._checkedMapping(data))

    def to_json(self, indent: int | None = None) -> str:
        """Serialize to JSON text.

        Parameters
        ----------
        indent : `int`, optional
            Passed to `json.dumps`.

        Returns
        -------
        text : `str`
            The JSON object of `to_dict`. Non-finite floats are written as
            the constants ``NaN``, ``Infinity`` and ``-Infinity``.
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskMetadata:
        """Build metadata from JSON text written by `to_json`.

        Parameters
        ----------
        text : `str` or `bytes`
            A JSON object.

        Returns
        -------
        metadata : `TaskMetadata`
            Equal to the serialized container (empty arrays included).

        Raises
        ------
        ValueError
            If the text is not valid JSON, is not a JSON object, or holds a
            disallowed value such as ``null``.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"Metadata JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    # -- comparison and display -------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskMetadata):
            return NotImplemented
        if self._items.keys() != other._items.keys():
            return False
        for key, mine in self._items.items():
            theirs = other._items[key]
            if isinstance(mine, TaskMetadata) or isinstance(theirs, TaskMetadata):
                if not (isinstance(mine, TaskMetadata) and mine == theirs):
                    return False
            elif isinstance(mine, list) or isinstance(theirs, list):
                if not (
                    isinstance(mine, list)
                    and isinstance(theirs, list)
                    and len(mine) == len(theirs)
                    and all(_sameLeaf(a, b) for a, b in zip(mine, theirs))
                ):
                    return False
            elif not _sameLeaf(mine, theirs):
                return False
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


Mapping.register(TaskMetadata)
