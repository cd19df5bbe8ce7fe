"""Unit tests: what a sandbox should be, decided before anything is created."""

from __future__ import annotations

import pytest

from nskernel import ALL_NAMESPACES, Bind, SandboxSpec, SpecError
from nskernel.cli import build_parser


def test_no_flag_means_all_six():
    assert SandboxSpec.from_flags([]).namespaces == frozenset(ALL_NAMESPACES)


def test_a_user_namespace_is_always_added_and_pid_brings_mnt():
    assert SandboxSpec.from_flags(["net", "uts"]).effective_namespaces() == {"net", "uts", "user"}
    assert SandboxSpec.from_flags(["pid"]).effective_namespaces() == {"pid", "mnt", "user"}
    opted_out = SandboxSpec.from_flags(["net"], no_userns=True)
    assert opted_out.effective_namespaces() == {"net"}
    with pytest.raises(SpecError, match="contradict"):
        SandboxSpec.from_flags(["net", "user"], no_userns=True)


@pytest.mark.parametrize("name", ["-box", "box-", "a" * 64, "has space", "dot.ted", ""])
def test_invalid_hostnames_are_refused(name):
    with pytest.raises(SpecError, match="invalid hostname"):
        SandboxSpec(hostname=name)


def test_hostname_needs_uts():
    with pytest.raises(SpecError, match="UTS"):
        SandboxSpec(namespaces=frozenset({"net"}), hostname="box")


def test_unknown_namespace_is_named():
    with pytest.raises(SpecError, match=r"unknown namespace type.*cgroupz"):
        SandboxSpec(namespaces=frozenset({"cgroupz"}))


def test_binds_need_a_mount_namespace():
    with pytest.raises(SpecError, match="--mnt"):
        SandboxSpec(namespaces=frozenset({"net"}), binds=(Bind("/etc", "/etc"),))


def test_root_can_never_map_to_host_root():
    with pytest.raises(SpecError, match="host's root"):
        SandboxSpec(map_root_to=0)


@pytest.mark.parametrize(
    ("text", "ro", "expected"),
    [
        ("/data", False, Bind("/data", "/data", False)),
        ("/data:/in", True, Bind("/data", "/in", True)),
    ],
)
def test_bind_parse(text, ro, expected):
    assert Bind.parse(text, readonly=ro) == expected


@pytest.mark.parametrize("text", [":/x", "/x:"])
def test_bind_parse_errors_show_the_expected_form(text):
    with pytest.raises(SpecError, match="SRC:DST"):
        Bind.parse(text)


def test_missing_bind_source_is_a_clear_error(tmp_path):
    spec = SandboxSpec(binds=(Bind(str(tmp_path / "nope"), "/x"),))
    with pytest.raises(SpecError, match="no such file"):
        spec.validate_host_paths()


def test_run_help_documents_namespaces_exit_codes_and_the_added_user_namespace():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = run.format_help()
    for needle in ("--pid", "--net", "--mnt", "--uts", "--ipc", "--user", "--status-json"):
        assert needle in text
    assert "A user" in text and "never host root" in text and "--no-userns" in text
    assert "125" in text and "127" in text
