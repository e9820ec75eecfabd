"""`Struct`: a small named-attribute container returned by ``Task.run``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

__all__ = ["Struct"]


class Struct(SimpleNamespace):
    """A namespace of named items built from keyword arguments.

    By convention a task's ``run`` method returns a `Struct` whose item
    names describe its outputs, e.g. ``Struct(exposure=..., kernel=...)``.

    Parameters
    ----------
    **kwargs
        The items, as ``name=value`` pairs. They become attributes.

    Raises
    ------
    RuntimeError
        If a name starts with ``__`` or would shadow an existing attribute
        of `Struct` (such as the method ``copy``).

    Notes
    -----
    ``repr`` separates items with ``; ``, e.g. ``Struct(a=1; b=2)``.
    Attributes may still be set or deleted after construction with ordinary
    attribute syntax; only the constructor and `mergeItems` check names.

    Examples
    --------
    >>> s = Struct(a=1, b=2)
    >>> s.a, len(s)
    (1, 2)
    >>> s
    Struct(a=1; b=2)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        for name, value in kwargs.items():
            self._addItem(name, value)

    def _addItem(self, name: str, value: Any) -> None:
        """Add one item after checking its name.

        Parameters
        ----------
        name : `str`
            Item name.
        value : `object`
            Item value.

        Raises
        ------
        RuntimeError
            If ``name`` starts with ``__``, is already an item, or is an
            attribute of the class (a method name).
        """
        if name.startswith("__"):
            raise RuntimeError(f"Struct item name {name!r} is invalid: names starting with '__' are reserved")
        if name in self.__dict__:
            raise RuntimeError(f"Struct item {name!r} is already present (value {self.__dict__[name]!r})")
        if hasattr(type(self), name):
            raise RuntimeError(f"Struct item name {name!r} would shadow the Struct attribute of that name")
        setattr(self, name, value)

    def getDict(self) -> dict[str, Any]:
        """Return the items as a new dictionary.

        Returns
        -------
        items : `dict` [`str`, `object`]
            A shallow copy: the dictionary is new, the values are shared.
        """
        return dict(self.__dict__)

    def mergeItems(self, struct: Struct, *nameList: str) -> None:
        """Copy the named items of another `Struct` into this one.

        Parameters
        ----------
        struct : `Struct`
            The source of the items.
        *nameList : `str`
            Names of the items to copy; with no names nothing is copied.

        Raises
        ------
        RuntimeError
            If a name is already an item of this struct (or is otherwise
            invalid, as in the constructor). Items before the offending
            name have already been copied.
        AttributeError
            If ``struct`` has no item of a given name.
        """
        for name in nameList:
            self._addItem(name, getattr(struct, name))

    def copy(self) -> Struct:
        """Return a one-level copy.

        Returns
        -------
        copy : `Struct`
            A new struct with the same items; the values themselves are
            shared, not copied.
        """
        return type(self)(**self.getDict())

    def __len__(self) -> int:
        return len(self.__dict__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Struct):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        items = "; ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({items})"
