"""The "Python 3 (sandboxed)" Jupyter kernel.

Layout:

- ``provisioner``  NamespaceProvisioner: the jupyter_client entry point (runs inside
  jupyter_server / KernelManager, which are multi-threaded: it never creates namespaces
  itself, it starts the launcher)
- ``launch``       the launcher: a fresh, single-threaded process that creates the sandbox,
  runs ipykernel in it and stays alive as the process jupyter_client watches
- ``staging``      host-root only: make the socket and notebook directories reachable and
  writable for sandbox root without ever mapping it to host uid 0 (idmapped mounts)
- ``install``      ``nskernel install`` / ``nskernel uninstall``
- ``hints``        IPython extension, inside: "Read-only file system" in the notebook's
  directory says why and what to do
- ``shell_inside`` IPython extension, inside (the kernel's and every ``%%sandbox`` cell
  runner's): ``%pip`` installs into the private home, the kernel's Python first on PATH
"""

from __future__ import annotations

DEFAULT_NAME = "nskernel"
DEFAULT_DISPLAY_NAME = "Python 3 (sandboxed)"
PROVISIONER_NAME = "nskernel-provisioner"
# Inside the sandbox: where the host's facts (as seen just before creation, written by
# nskernel.facts.capture_host_facts) and the sandbox's own status JSON are.
HOST_FACTS_ENV = "NSKERNEL_HOST_FACTS"
SANDBOX_FACTS_ENV = "NSKERNEL_SANDBOX_FACTS"
