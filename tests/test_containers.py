"""nskernel inside Docker containers, for real: a private dockerd, an image made here.

Each container runs ``tests/helpers/in_container.py``, which does what a user would:
``nskernel doctor``, ``nskernel run``, a ``%%sandbox`` cell in a plain ipykernel, and a
jupyter_server whose sandboxed kernel answers a cell over REST and websocket (plus a
kernel without a network namespace, as an Enterprise Gateway kernel pod runs it, that
reaches the server on the container's loopback). Each runs as container root and as
``--user 1000``:

- with the settings docs/deploy.md documents (the container seccomp profile that
  ``nskernel doctor --print-seccomp-profile`` writes, and ``systempaths=unconfined``):
  it all works, in namespaces of its own;
- with Docker's defaults: everything fails closed (no code runs unsandboxed: the marker
  files stay absent), and doctor names both blockers and the exact ``docker run`` flags.

Docker itself is Debian's docker.io, started privately by tests/dockerlab.py (root only;
the rootless tier skips as for every root test). Where it cannot run, the tests skip
with the reason, and NSKERNEL_MUST_WORK=1 turns that into a failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests import dockerlab
from tests.conftest import require

pytestmark = [pytest.mark.root, pytest.mark.slow]

STEPS = ("doctor", "run", "magic", "server")
USERS = {"root": 0, "user1000": dockerlab.USER_UID}
DOCKER_DEFAULTS: list[str] = []


class Lab:
    """The private daemon and what each container configuration reported (each
    configuration runs once, for all the tests that look at it)."""

    def __init__(self, docker: dockerlab.PrivateDocker) -> None:
        self.docker = docker
        self.results: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
        self.seccomp = self._documented_seccomp()

    def _documented_seccomp(self) -> str:
        """The container seccomp profile, as `nskernel doctor --print-seccomp-profile`
        writes it: the documented setting is tested with exactly that file."""
        from nskernel import doctor

        path = f"{self.docker.base}/{doctor.PROFILE_FILE}"
        with open(path, "w") as f:
            json.dump(doctor.container_seccomp_profile(), f)
        return path

    def documented(self) -> list[str]:
        return [
            f"--security-opt=seccomp={self.seccomp}",
            "--security-opt=systempaths=unconfined",
        ]

    def outcome(self, options: list[str], user: int, steps: tuple[str, ...] = STEPS) -> Any:
        key = (*options, str(user), *steps)
        if key not in self.results:
            r = self.docker.run(
                options, ["python", "-m", "tests.helpers.in_container", *steps], user=user
            )
            seen: dict[str, dict[str, Any]] = {}
            for line in r.stdout.splitlines():
                if line.startswith("{"):
                    msg = json.loads(line)
                    seen[msg.pop("step")] = msg
            missing = [s for s in steps if s not in seen]
            assert not missing, (
                f"docker run exited {r.returncode} without reporting {missing}:\n"
                f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            )
            self.results[key] = seen
        return self.results[key]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require(dockerlab.unavailable())
    try:
        cm = dockerlab.private_docker()
        docker = cm.__enter__()
    except RuntimeError as e:
        require(f"a private dockerd could not run here: {e}")
        raise
    try:
        yield Lab(docker)
    finally:
        cm.__exit__(None, None, None)


def _ok(step: dict[str, Any]) -> dict[str, Any]:
    assert "exception" not in step, step["exception"]
    return step


def _own_namespaces(inside: dict[str, int] | None, outside: dict[str, int]) -> None:
    assert inside is not None
    same = [t for t in inside if inside[t] == outside[t]]
    assert not same, f"the sandbox shares the container's {same} namespaces"


# ---------------------------------------------------------------- documented settings


@pytest.mark.parametrize("who", USERS)
def test_doctor_in_a_container_with_the_documented_settings(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(lab.documented(), USERS[who])["doctor"])
    report = step["report"]
    assert step["returncode"] == 0, step["text"]
    assert report["ok"] is True and report["blockers"] == []
    assert report["runtime"]["name"] == "docker"
    assert all(r["ok"] for r in report["namespaces"].values()), report["namespaces"]
    assert "Sandboxes work here." in step["text"]


@pytest.mark.parametrize("who", USERS)
def test_nskernel_run_in_a_container_with_the_documented_settings(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(lab.documented(), USERS[who])["run"])
    assert step["returncode"] == 0, step["stderr"]
    _own_namespaces(step["inside"], step["outside"])
    assert step["uid_inside"] == "0"
    assert not step["marker"], "the command wrote outside its read-only sandbox root"


@pytest.mark.parametrize("who", USERS)
def test_sandbox_magic_in_a_container_with_the_documented_settings(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(lab.documented(), USERS[who])["magic"])
    assert step["status"] == "ok", step["error"]
    _own_namespaces(step["inside"], step["outside"])
    assert not step["marker"]


@pytest.mark.parametrize("who", USERS)
def test_jupyter_server_in_a_container_with_the_documented_settings(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(lab.documented(), USERS[who])["server"])
    assert "start_error" not in step, step.get("log_tail")
    assert step["cell_error"] is None and not step["marker"]
    _own_namespaces(step["inside"], step["outside"])
    assert step["hostname"].strip() == f"nsk-{step['kernel_id'][:8]}"
    # The Enterprise Gateway setting: no network namespace, so the kernel still reaches
    # the server (its gateway) on the container's loopback; every other one is its own.
    nonet = step["nonet"]
    assert nonet["error"] is None and nonet["status"] == "200", nonet
    assert nonet["inside"]["net"] == step["outside"]["net"]
    _own_namespaces(
        {t: v for t, v in nonet["inside"].items() if t != "net"},
        {t: v for t, v in step["outside"].items() if t != "net"},
    )


# ---------------------------------------------------------------- Docker's defaults

FLAGS = "--security-opt seccomp=nskernel-seccomp.json --security-opt systempaths=unconfined"


@pytest.mark.parametrize("who", USERS)
def test_doctor_with_docker_defaults_names_both_blockers_and_the_flags_once(
    lab: Lab, who: str
) -> None:
    step = _ok(lab.outcome(DOCKER_DEFAULTS, USERS[who])["doctor"])
    report, text = step["report"], step["text"]
    assert step["returncode"] == 1 and step["text_returncode"] == 1
    assert report["runtime"]["name"] == "docker"
    assert [(b["id"], b["seen"]) for b in report["blockers"]] == [
        ("seccomp", True),
        ("masked", False),  # predicted: the probes never got that far
    ]
    assert {r["blocker"] for r in report["namespaces"].values()} == {"seccomp"}
    assert report["fix"] == f"docker run {FLAGS} IMAGE ..."
    assert "unconfined" in " ".join(report["blockers"][0]["fix"])
    assert "/proc/kcore" in str(report["masked"]) or report["masked"]["/proc"]
    # Said once, not per namespace; never circular, never "mount the host's /proc".
    for b in report["blockers"]:
        assert text.count(b["why"]) == 1, text
    assert text.count(f"docker run {FLAGS}") == 1
    assert "`nskernel doctor`" not in text
    assert "/proc:/proc" not in text and "host's /proc" not in text


@pytest.mark.parametrize("who", USERS)
def test_nskernel_run_with_docker_defaults_fails_closed(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(DOCKER_DEFAULTS, USERS[who])["run"])
    assert step["returncode"] == 125, step["stderr"]
    assert not step["marker"], "the command ran although no sandbox could be made"
    assert "seccomp" in step["stderr"] and "--security-opt seccomp=" in step["stderr"]


@pytest.mark.parametrize("who", USERS)
def test_sandbox_magic_with_docker_defaults_fails_closed(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(DOCKER_DEFAULTS, USERS[who])["magic"])
    assert step["status"] == "error"
    assert not step["marker"], "the cell ran although no sandbox could be made"
    # The cell says the cause and the fix, or where to get them (doctor, tested above).
    assert "--security-opt seccomp=" in step["error"] or "nskernel doctor" in step["error"]


@pytest.mark.parametrize("who", USERS)
def test_jupyter_server_with_docker_defaults_fails_closed(lab: Lab, who: str) -> None:
    step = _ok(lab.outcome(DOCKER_DEFAULTS, USERS[who])["server"])
    assert step["start_error"]["status"] == 500
    assert not step["marker"]
    assert "seccomp" in step["log_tail"] and "--security-opt seccomp=" in step["log_tail"]
    assert "never runs unsandboxed" in step["log_tail"]


# ---------------------------------------------------------------- one setting of two


@pytest.mark.parametrize(
    ("given", "left"),
    [
        ("--security-opt=seccomp=unconfined", "masked"),
        ("--security-opt=systempaths=unconfined", "seccomp"),
    ],
    ids=["seccomp-only", "systempaths-only"],
)
def test_doctor_names_only_what_is_still_in_the_way(lab: Lab, given: str, left: str) -> None:
    step = _ok(lab.outcome([given], dockerlab.USER_UID, ("doctor",))["doctor"])
    report = step["report"]
    assert report["ok"] is False
    assert [b["id"] for b in report["blockers"]] == [left]
    assert report["blockers"][0]["seen"] is True
    flag = {"masked": "systempaths=unconfined", "seccomp": "seccomp=nskernel-seccomp.json"}[left]
    assert report["fix"] == f"docker run --security-opt {flag} IMAGE ..."


# ---------------------------------------------------------------- degraded, by opt-in


def test_masked_proc_and_sys_fail_closed_unless_degraded_modes_are_allowed(lab: Lab) -> None:
    # The container's seccomp allows what nskernel needs, but the runtime masks parts of
    # /proc and /sys: a fresh one is refused. By default nothing runs...
    profile = [f"--security-opt=seccomp={lab.seccomp}"]
    step = _ok(lab.outcome(profile, dockerlab.USER_UID, ("run",))["run"])
    assert step["returncode"] == 125 and not step["marker"]
    # ...with --allow-degraded proc,sys the sandbox runs on the container's own /proc
    # and /sys (read-only), in namespaces of its own, and says what it lost.
    degraded = [*profile, "--env=NSKERNEL_ALLOW_DEGRADED=proc,sys"]
    step = _ok(lab.outcome(degraded, dockerlab.USER_UID, ("run",))["run"])
    assert step["returncode"] == 0, step["stderr"]
    assert not step["marker"]
    _own_namespaces(step["inside"], step["outside"])
    assert "the container's runtime refuses a fresh /proc" in step["stderr"]
    assert "the container's runtime refuses a fresh /sys" in step["stderr"]
