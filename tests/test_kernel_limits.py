"""Resource limits set in the kernelspec (`nskernel install --memory/--pids/--cpus`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nskernel.kernel import install
from tests.kernel_helpers import kernel_dirs
from tests.test_kernel import kernel

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def ksm(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("prefix")
    # 1G: where the memory limit falls back to RLIMIT_AS (rootless without a delegated
    # cgroup), 512M of address space is too little for ipykernel with its output-capture
    # threads (glibc reserves 64 MiB per thread arena) and the kernel dies at start.
    limits = {"pids": "24", "memory": "1G"}
    install.install(name="nsk-limited", prefix=str(prefix), limits=limits)
    kernels = prefix / "share" / "jupyter" / "kernels"
    bad = kernels / "nsk-bad-limits"
    install.install(name="nsk-bad-limits", prefix=str(prefix))
    spec = json.loads((bad / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["limits"] = {"memory": "lots"}
    (bad / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def test_install_writes_validated_limits(ksm: KernelSpecManager) -> None:
    config = ksm.get_kernel_spec("nsk-limited").metadata["kernel_provisioner"]["config"]
    assert config["limits"] == {"pids": "24", "memory": "1G"}
    with pytest.raises(install.InstallError, match="invalid size 'lots'"):
        install.kernel_json(limits={"memory": "lots"})


def test_a_limited_session_contains_a_fork_bomb(ksm: KernelSpecManager, tmp_path: Path) -> None:
    with kernel(ksm, tmp_path, name="nsk-limited") as k:
        out = k.run(
            """
            import os, time
            kids = []
            try:
                for _ in range(100):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30)
                        os._exit(0)
                    kids.append(pid)
            except OSError as e:
                print("refused after", len(kids))
            for pid in kids:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            """
        )
        assert out["stdout"].startswith("refused after"), out
        assert int(out["stdout"].split()[-1]) < 24
        assert k.run("print(6 * 7)")["stdout"] == "42\n"  # the session goes on


def test_an_unusable_limits_setting_fails_the_start_clearly(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    before = kernel_dirs()
    km = KernelManager(kernel_name="nsk-bad-limits", kernel_spec_manager=ksm)
    with pytest.raises(Exception, match=r"unusable limits setting.*invalid size 'lots'"):
        km.start_kernel(cwd=str(tmp_path))
    assert not km.has_kernel
    assert kernel_dirs() == before, "a failed start left a kernel dir"
