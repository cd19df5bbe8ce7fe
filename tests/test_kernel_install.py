"""`nskernel install` / `nskernel uninstall` through the real CLI, into a throwaway prefix."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from tests.conftest import nskernel_cmd


def _env(prefix: Path) -> dict[str, str]:
    # uninstall finds kernelspecs through Jupyter's path, never the user's real dirs here.
    return dict(
        os.environ,
        JUPYTER_PATH=str(prefix / "share" / "jupyter"),
        JUPYTER_DATA_DIR=str(prefix / "data"),
    )


def test_install_side_by_side_and_uninstall(nsk, tmp_path: Path) -> None:
    env = _env(tmp_path)
    res = nsk("install", "--prefix", str(tmp_path), env=env)
    assert res.returncode == 0, res.stderr
    res = nsk(
        "install",
        "--prefix",
        str(tmp_path),
        "--name",
        "nsk-net",
        "--display-name",
        "Python 3 (net only)",
        "--namespaces",
        "net,uts",
        "--hostname",
        "box1",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    specs = ksm.get_all_specs()
    assert set(specs) == {"nskernel", "nsk-net"}

    default = json.loads((kernels / "nskernel" / "kernel.json").read_text())
    assert default["display_name"] == "Python 3 (sandboxed)"
    assert default["argv"][:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert os.path.isabs(default["argv"][0])
    prov = default["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "nskernel-provisioner"
    assert prov["config"]["namespaces"] == ["pid", "net", "mnt", "uts", "ipc", "user"]
    assert (kernels / "nskernel" / "logo-64x64.png").read_bytes()[:4] == b"\x89PNG"

    net = json.loads((kernels / "nsk-net" / "kernel.json").read_text())
    assert net["display_name"] == "Python 3 (net only)"
    config = net["metadata"]["kernel_provisioner"]["config"]
    assert config == {"namespaces": ["net", "uts", "user"], "hostname": "box1"}

    res = nsk("uninstall", "--name", "nsk-net", env=env)
    assert res.returncode == 0, res.stderr
    assert not (kernels / "nsk-net").exists()
    assert (kernels / "nskernel").exists()
    res = nsk("uninstall", "--name", "nsk-net", env=env)
    assert res.returncode != 0
    assert "no kernelspec named 'nsk-net'" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespaces", "pid,bogus"], "unknown namespace type(s) bogus"),
        (["--namespaces", "pid", "--hostname", "x"], "--hostname needs the uts namespace"),
        (["--hostname=bad_name"], "invalid hostname"),
    ],
)
def test_install_rejects_bad_options(nsk, tmp_path: Path, args: list[str], message: str) -> None:
    res = nsk("install", "--prefix", str(tmp_path), *args, env=_env(tmp_path))
    assert res.returncode != 0
    assert message in res.stderr
    assert not (tmp_path / "share").exists()


def test_provisioner_entry_point_is_registered() -> None:
    from jupyter_client.provisioning import KernelProvisionerFactory

    from nskernel.kernel.provisioner import NamespaceProvisioner

    eps = KernelProvisionerFactory.instance()._get_all_provisioners()
    found = {ep.name: ep.load() for ep in eps}
    assert found.get("nskernel-provisioner") is NamespaceProvisioner
    assert nskernel_cmd("install")[-1] == "install"


def test_install_rejects_bad_limits(nsk, tmp_path: Path) -> None:
    res = nsk("install", "--prefix", str(tmp_path), "--pids", "none", env=_env(tmp_path))
    assert res.returncode != 0
    assert "invalid --pids 'none'" in res.stderr
    assert not (tmp_path / "share").exists()
