"""Plain-data classes, made the way :mod:`dataclasses` makes them, without importing it.

Why: ``import dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis`` and
``tokenize``), and each class it makes compiles its methods with ``exec``. For nskernel's
fourteen records that was ~11 ms of every ``nskernel run``, which starts a process whose
whole point is to be quick. What nskernel needs of dataclasses is small, and kept here
with the same meaning:

- fields in annotation order (a subclass's after its bases'), each with an optional
  default, or ``factory(make)`` for a fresh default per instance (``field(default_factory=)``);
- ``__init__`` taking them by position or keyword, then calling ``__post_init__`` if the
  class has one;
- ``repr``, ``==`` (same class, equal fields), and with ``frozen=True`` instances that
  refuse assignment (:class:`FrozenInstanceError`) and hash by their fields;
- :func:`replace`, :func:`fields`, :func:`astuple` and :func:`asdict` (the last two are
  shallow: nskernel's records hold no records that need converting).

Instances are ordinary objects with a ``__dict__``: copy and pickle work as for any class.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """A field of a frozen record was assigned or deleted."""


class factory:
    """A default made anew for each instance: ``warnings: list[str] = factory(list)``."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def record(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """Make ``cls`` a record (see the module note); ``@record`` or ``@record(frozen=True)``."""

    def wrap(cls: type[T]) -> type[T]:
        names: list[str] = []
        defaults: dict[str, object] = {}
        for base in reversed(cls.__mro__[1:]):
            for name in getattr(base, "__record_fields__", ()):
                if name not in names:
                    names.append(name)
            defaults.update(getattr(base, "__record_defaults__", {}))
        # The class's own annotations (not inspect.get_annotations: inspect is the import
        # this module exists to avoid); only their names are used, never evaluated.
        for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063
            if name not in names:
                names.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], factory):
                    delattr(cls, name)  # the instance always has its own
        required_after_default = [
            n for i, n in enumerate(names) if n not in defaults and set(names[:i]) & set(defaults)
        ]
        if required_after_default:
            msg = f"{cls.__name__}: field {required_after_default[0]!r} needs a default"
            raise TypeError(msg)
        cls.__record_fields__ = tuple(names)  # type: ignore[attr-defined]
        cls.__record_defaults__ = defaults  # type: ignore[attr-defined]
        cls.__match_args__ = tuple(names)  # type: ignore[attr-defined]
        cls.__init__ = _init  # type: ignore[assignment,misc]
        cls.__repr__ = _repr  # type: ignore[assignment,method-assign]
        cls.__eq__ = _eq  # type: ignore[assignment,method-assign]
        if frozen:
            cls.__setattr__ = _refuse_setattr  # type: ignore[assignment,method-assign]
            cls.__delattr__ = _refuse_delattr  # type: ignore[assignment,method-assign]
            cls.__hash__ = _hash  # type: ignore[assignment,method-assign]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # as dataclasses: eq, so unhashable
        return cls

    return wrap if cls is None else wrap(cls)


def _init(self: Any, *args: object, **kwargs: object) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__record_fields__
    if len(args) > len(names):
        msg = f"{cls.__name__}() takes {len(names)} arguments but {len(args)} were given"
        raise TypeError(msg)
    values = dict(zip(names, args, strict=False))  # fewer args than fields: defaults
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {key!r}")
        if key in values:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {key!r}")
        values[key] = value
    defaults: dict[str, object] = cls.__record_defaults__
    put = object.__setattr__
    for name in names:
        if name in values:
            put(self, name, values[name])
        elif name in defaults:
            default = defaults[name]
            put(self, name, default.make() if isinstance(default, factory) else default)
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return astuple(self) == astuple(other)


def _hash(self: Any) -> int:
    return hash(astuple(self))


def _refuse_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def fields(record_or_class: Any) -> tuple[str, ...]:
    """The field names, in order."""
    return record_or_class.__record_fields__


def astuple(obj: Any) -> tuple[Any, ...]:
    """The field values, in order."""
    return tuple(getattr(obj, name) for name in obj.__record_fields__)


def asdict(obj: Any) -> dict[str, Any]:
    """The fields as a dict (a new dict; the values themselves are not copied)."""
    return {name: getattr(obj, name) for name in obj.__record_fields__}


def replace(obj: T, /, **changes: object) -> T:
    """A new record like ``obj`` with ``changes`` (``__init__`` and ``__post_init__`` run)."""
    values = asdict(obj)
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)
