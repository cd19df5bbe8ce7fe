"""nskernel._record: the plain-data classes nskernel makes without importing dataclasses
(which cost every `nskernel run` ~11 ms). Same meaning as dataclasses where both exist."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from nskernel._record import (
    FrozenInstanceError,
    asdict,
    astuple,
    factory,
    fields,
    record,
    replace,
)


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))


@record
class Bag:
    name: str
    items: list[int] = factory(list)


@record(frozen=True)
class Point3(Point):
    z: int = 0


def test_fields_by_position_or_keyword_with_defaults_and_post_init():
    assert astuple(Point(1)) == (1, 0, ())
    assert asdict(Point(1, y=2, tags=["a"])) == {"x": 1, "y": 2, "tags": ("a",)}
    assert fields(Point) == fields(Point(1)) == ("x", "y", "tags")
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"
    for bad in (lambda: Point(), lambda: Point(1, 2, (), 4), lambda: Point(1, w=3)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=2)


def test_a_factory_default_is_fresh_for_each_instance():
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    assert b.items == [] and a.items == [1]
    assert "items" not in Bag.__dict__


def test_frozen_records_refuse_assignment_and_hash_by_their_fields():
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    assert hash(p) == hash(Point(1, 2)) and {p, Point(1, 2)} == {p}
    with pytest.raises(TypeError):
        hash(Bag("a"))  # mutable: equal by fields, so unhashable (as dataclasses)


def test_equal_only_to_the_same_class_with_equal_fields():
    assert Point(1, 2) == Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != (1, 2, ())
    assert Point3(1, 2) != Point(1, 2)


def test_a_subclass_adds_its_fields_after_its_bases():
    assert fields(Point3) == ("x", "y", "tags", "z")
    assert astuple(Point3(1, 2, ["t"], 4)) == (1, 2, ("t",), 4)


def test_replace_makes_a_new_record_through_init():
    p = Point(1, 2)
    q = replace(p, tags=["b"])
    assert q == Point(1, 2, ("b",)) and p.tags == ()  # __post_init__ ran on q
    with pytest.raises(TypeError, match="no field"):
        replace(p, w=1)


def test_a_required_field_after_a_default_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="needs a default"):

        @record
        class Wrong:
            a: int = 0
            b: int


def test_records_copy_and_pickle_as_ordinary_objects():
    p = Point3(1, 2, ("t",), 4)
    assert copy.copy(p) == copy.deepcopy(p) == pickle.loads(pickle.dumps(p)) == p


def test_nskernel_run_imports_neither_dataclasses_nor_typing():
    heavy = "{'dataclasses', 'inspect', 'typing'}"
    code = f"import sys, nskernel.cli; print(sorted({heavy} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout
