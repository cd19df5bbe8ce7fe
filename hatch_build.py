"""Build hook: compile the sandbox init (``nskernel/_linux/init.c``) into the package, and
precompile the default seccomp filter (``precompile_filter``).

Why a native init: see the comment at the top of init.c. Without a C compiler the build
still succeeds, with a warning: nskernel then keeps its Python init (every feature
works, each sandbox just holds more memory), and ``nskernel doctor`` says which init is
in use. ``CC`` chooses the compiler; ``NSKERNEL_NO_NATIVE_INIT=1`` skips the build.

pip shows a build backend's output only with ``-v``, so the warning alone would go
unseen. The reason is therefore also written next to where the binary would be
(:data:`NOTE`, ``nskernel/_linux/nskernel-init.missing``: one line, what happened and the
fix), in the source tree for an editable install and inside the wheel otherwise, where
``nskernel doctor`` and nskernel's first sandbox can show it; a successful build removes
it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("nskernel/_linux/init.c")
BINARY = Path("nskernel/_linux/nskernel-init")
NOTE = Path("nskernel/_linux/nskernel-init.missing")
FILTER = Path("nskernel/_linux/profiles/default.precompiled.json")


def _warn(text: str) -> None:
    print(f"nskernel build: {text}", file=sys.stderr)


def _note_why(root: Path, why: str) -> None:
    """Say it where the user will see it: pip hides this hook's output (see above)."""
    _warn(why)
    (root / NOTE).write_text(why.splitlines()[0] + "\n")


def compile_init(root: Path) -> Path | None:
    """Compile init.c next to itself; the binary's path, or None (with a warning and NOTE)."""
    (root / NOTE).unlink(missing_ok=True)
    if os.environ.get("NSKERNEL_NO_NATIVE_INIT") == "1":
        _note_why(root, "NSKERNEL_NO_NATIVE_INIT=1 was set: the native init was not built")
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _note_why(
            root,
            "no C compiler (cc/gcc) was found when nskernel was installed: sandboxes use "
            "the Python init, which holds more memory per sandbox; install gcc and libc6-dev "
            "(Debian) and reinstall nskernel to build the native one",
        )
        return None
    src, out = root / SOURCE, root / BINARY
    tmp = out.with_name(out.name + ".tmp")
    base = [cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(src)]
    # Static first: the init then needs no loader or libc inside the sandbox. Without
    # libc.a (libc6-dev's static part), a dynamic build works as well here.
    errors = []
    for cmd in ([*base[:1], "-static", *base[1:]], base):
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            tmp.chmod(0o755)  # sandbox root is often "other" to this file
            os.replace(tmp, out)
            return out
        errors.append(f"$ {' '.join(cmd)}\n{r.stderr.strip()}")
    tmp.unlink(missing_ok=True)
    _note_why(
        root,
        f"compiling the native init with {cc} failed when nskernel was installed: sandboxes "
        "use the Python init; reinstall with pip -v to see the compiler's errors\n"
        + "\n".join(errors),
    )
    return None


def precompile_filter(root: Path) -> Path | None:
    """Compile the default seccomp filter for this machine into the package (see
    ``seccomp.PRECOMPILED``: it spares every fresh process loading libseccomp and
    compiling, ~10 ms). Optional: without it nskernel compiles at run time, so a failure
    here (no libseccomp where the package is built) is only reported."""
    out = root / FILTER
    out.unlink(missing_ok=True)
    code = "from nskernel._linux import seccomp; seccomp.precompile()"
    # The source tree first, and whatever PYTHONPATH pip gave this build: its isolated
    # build environment (where pyseccomp, a build requirement, is) is found through it.
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or not out.exists():
        _warn(f"the default seccomp filter was not precompiled (compiled at run time):\n{r.stderr}")
        return None
    return out


class NativeInitHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return  # the sdist ships init.c, not a binary
        precompiled = precompile_filter(Path(self.root))
        if precompiled is not None and version != "editable":
            build_data["force_include"][str(precompiled)] = str(FILTER)
        out = compile_init(Path(self.root))
        if out is None:
            if version != "editable":  # an editable install finds the note in the tree
                build_data["force_include"][str(Path(self.root) / NOTE)] = str(NOTE)
            return
        # A binary inside: the wheel is for this platform only (any Python 3: the binary
        # does not link against Python).
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
        if version != "editable":  # an editable install finds it in the source tree
            build_data["force_include"][str(out)] = str(BINARY)
