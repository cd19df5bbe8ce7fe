"""``%%sandbox`` through a real ipykernel: namespaces, output, errors, named sandboxes.

One kernel serves most tests (a module fixture); tests that end a kernel start their own.
Everything here runs both as root and rootless (CI runs the suite twice); where the two
differ (who sandbox root is on the host) the assertion says which.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import tempfile
import textwrap
import time

import pytest

from tests.hostile import descendants
from tests.magic_helpers import Output, execute, host_namespaces, kernel, wait_gone

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

IS_ROOT = os.geteuid() == 0

PROBE = textwrap.dedent(
    """
    import json, os, socket
    types = ("pid", "net", "mnt", "uts", "ipc", "user")
    ns = {{t: os.stat(f"/proc/self/ns/{{t}}").st_ino for t in types}}
    with open("/proc/sysvipc/msg") as f:
        msq = [int(l.split()[1]) for l in f.read().splitlines()[1:]]
    try:
        open("/nsk-probe-write", "w").close(); os.unlink("/nsk-probe-write"); root_rw = True
    except OSError:
        root_rw = False
    print(json.dumps({{
        "pid": os.getpid(), "hostname": socket.gethostname(), "ns": ns,
        "ifaces": sorted(n for _, n in socket.if_nameindex()),
        "uid": os.getuid(), "uid_map": open("/proc/self/uid_map").read().split(),
        "msq": msq, "marker": os.path.exists({marker!r}), "root_rw": root_rw,
    }}))
    """
)


@pytest.fixture(scope="module")
def kc():
    with kernel() as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def host_msq():
    """A System V message queue on the host, to see which IPC namespace a cell is in."""
    libc = ctypes.CDLL(None, use_errno=True)
    qid = libc.msgget(0, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
    assert qid >= 0, os.strerror(ctypes.get_errno())
    yield qid
    libc.msgctl(qid, 0, None)  # IPC_RMID


@pytest.fixture(scope="module")
def marker():
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="nsk-magic-marker-") as f:
        yield f.name


@pytest.mark.parametrize(
    "flags",
    [["pid"], ["net"], ["mnt"], ["uts"], ["ipc"], ["user"], []],
    ids=["pid", "net", "mnt", "uts", "ipc", "user", "all-six"],
)
def test_namespaces_seen_from_the_cell(kc, host_msq, marker, flags):
    line = " ".join(f"--{f}" for f in flags)
    res = execute(kc, f"%%sandbox {line}\n" + PROBE.format(marker=marker))
    assert res.status == "ok", res.error_text
    seen = res.json_line()
    asked = set(flags) or {"pid", "net", "mnt", "uts", "ipc", "user"}
    # Every sandbox gets a user namespace (sandbox root is never host root), and --pid a
    # mount namespace with a fresh /proc.
    asked |= {"user"} | ({"mnt"} if "pid" in asked else set())
    host = host_namespaces()
    for t in ("pid", "net", "mnt", "uts", "ipc", "user"):
        assert (seen["ns"][t] != host[t]) == (t in asked), f"{t} namespace: {seen['ns']}"
    # In its own PID namespace the cell is one of the first PIDs (1 is the sandbox's init).
    assert (seen["pid"] < 10) == ("pid" in asked)
    if "uts" in asked:
        assert seen["hostname"].startswith("nsk-") and seen["hostname"] != os.uname().nodename
    else:
        assert seen["hostname"] == os.uname().nodename
    if "net" in asked:
        assert seen["ifaces"] == ["lo"]
    else:
        assert seen["ifaces"] == sorted(n for _, n in __import__("socket").if_nameindex())
    assert seen["uid"] == 0
    assert seen["uid_map"] != ["0", "0", "4294967295"]
    assert (host_msq in seen["msq"]) == ("ipc" not in asked)
    if "mnt" in asked:
        assert not seen["marker"], "the sandbox's /tmp must be private"
        assert not seen["root_rw"], "the host root must be read-only"
    else:
        assert seen["marker"]


def test_hostname_and_shell_escapes(kc):
    res = execute(
        kc, "%%sandbox --uts --pid --hostname box1\n!hostname\n%pwd\nimport os\nos.getpid()"
    )
    assert res.status == "ok", res.error_text
    assert res.stdout.splitlines()[0] == "box1"
    assert int(res.result) < 10  # the last expression (a sandbox PID) is this cell's result


def test_every_sandbox_draws_its_own_random_numbers(kc):
    """Each cell's sandbox is a copy of the server, made without Python's at-fork
    handlers (speed, memory): its runner reseeds random, or every cell would draw the
    numbers the server's state holds, and those of the cell before."""
    draws = []
    for _ in range(3):
        res = execute(kc, "%%sandbox\nimport random\nprint(random.getrandbits(64))")
        assert res.status == "ok", res.error_text
        draws.append(res.stdout.strip())
    assert len(set(draws)) == 3, draws


def _sent_at_once(kc, code: str, cells: int) -> list[str]:
    """Send ``cells`` requests of ``code`` at once, as "Run All" does; each one's
    output (its streams, and an error's traceback), in order."""
    ids = [kc.execute(code, allow_stdin=False) for _ in range(cells)]
    out: dict[str, str] = {i: "" for i in ids}
    idle: set[str] = set()
    deadline = time.monotonic() + 60
    while idle != set(ids):
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id")
        if parent not in out:
            continue
        if msg["msg_type"] == "stream":
            out[parent] += msg["content"]["text"]
        elif msg["msg_type"] == "error":
            out[parent] += "\n".join(msg["content"]["traceback"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle.add(parent)
    return [out[i] for i in ids]


def test_cells_sent_at_once_each_get_a_fresh_sandbox(kc):
    """As "Run All" sends them: every request at once. The server then sets each next
    cell's sandbox up while a cell runs (no quiet spell to wait for); each cell must
    still get a sandbox no cell has used: nothing left by the one before, its own
    hostname."""
    code = (
        "%%sandbox\nimport json, os, socket\n"
        "seen = os.path.exists('/tmp/left-by-a-cell')\n"
        "open('/tmp/left-by-a-cell', 'w').close()\n"
        "print(json.dumps({'host': socket.gethostname(), 'seen': seen}))"
    )
    out = _sent_at_once(kc, code, 6)
    seen = [json.loads(text.strip().splitlines()[-1]) for text in out]
    assert [s["seen"] for s in seen] == [False] * 6, out
    assert len({s["host"] for s in seen}) == 6, seen


def test_a_sandbox_made_while_cells_run_is_confined_like_one_made_alone(kc):
    """Cells back to back: each next sandbox is set up while a cell runs (red team 35).
    It must get the same confinement as one made while nothing else happens, and no
    descriptor of another sandbox's setup (a report pipe, a lifeline, a pidfd)."""
    code = (
        "%%sandbox\nimport collections, json, os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "kinds = collections.Counter()\n"
        "for n in os.listdir('/proc/self/fd'):\n"
        "    try:  # the listing's own descriptor is gone by now\n"
        "        kinds[os.readlink(f'/proc/self/fd/{n}').split(':')[0].split('[')[0]] += 1\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "keys = ('Seccomp', 'NoNewPrivs', 'CapEff', 'CapBnd', 'Uid', 'Gid', 'Groups')\n"
        "print(json.dumps({'status': {k: status[k].strip() for k in keys},\n"
        "                  'fds': sorted(kinds.items())}))"
    )
    time.sleep(0.3)  # made ahead after a quiet spell, alone
    alone = execute(kc, code)
    assert alone.status == "ok", alone.error_text
    out = _sent_at_once(kc, code, 6)
    assert json.loads(alone.stdout)["status"]["Seccomp"] == "2"  # filtered, to begin with
    for text in out:
        assert text == alone.stdout, (text, alone.stdout)


def test_output_streams_live(kc):
    code = "%%sandbox\nimport time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.5)\n"
    res = execute(kc, code)
    assert res.status == "ok", res.error_text
    ticks = [o for o in res.outputs if o.kind == "stream" and "tick" in o.text]
    assert "".join(o.text for o in ticks) == "tick 0\ntick 1\ntick 2\n"
    # Each line arrived on its own, while the cell was still running.
    assert len(ticks) == 3
    assert ticks[-1].at - ticks[0].at > 0.7


def test_stdout_stderr_display_keep_their_order(kc):
    code = textwrap.dedent(
        """\
        %%sandbox
        import sys
        from IPython.display import HTML, display
        print("one")
        print("two", file=sys.stderr)
        display(HTML("<b>three</b>"))
        !echo four
        print("five")
        !echo six >&2
        print("seven")
        """
    )
    res = execute(kc, code)
    assert res.status == "ok", res.error_text
    seq = []
    for o in res.outputs:
        if o.kind == "display_data":
            seq.append(("display", o.content["data"]["text/html"]))
        else:
            seq += [(o.content["name"], w) for w in o.text.split()]
    assert seq == [
        ("stdout", "one"),
        ("stderr", "two"),
        ("display", "<b>three</b>"),
        ("stdout", "four"),
        ("stdout", "five"),
        ("stderr", "six"),
        ("stdout", "seven"),
    ]


def test_error_fails_the_cell_with_the_sandbox_traceback(kc):
    res = execute(kc, "%%sandbox\nx = 1\nprint('before')\n1 / 0\nprint('never')")
    assert res.status == "error"
    assert res.reply["content"]["ename"] == "ZeroDivisionError"
    assert res.error["evalue"] == "division by zero"
    text = res.error_text
    # The cell's own line numbers, counted from the line after %%sandbox.
    assert "line 3" in text and "----> 3 1 / 0" in text, text
    assert "nskernel" not in text  # no frames of the kernel-side machinery
    assert res.stdout == "before\n"
    assert execute(kc, "%%sandbox\nprint('still works')").stdout == "still works\n"


def test_in_and_out(kc):
    execute(kc, "a = [1, 2, {'k': 'v'}]\nb = b'\\x00\\xffbytes'\nc = None")
    res = execute(
        kc,
        "%%sandbox --in a,b --out c,d\nc = {'n': len(a), 'k': a[2]['k'], 'b': b + b'!'}\nd = 4.5",
    )
    assert res.status == "ok", res.error_text
    res = execute(kc, "print(c == {'n': 3, 'k': 'v', 'b': b'\\x00\\xffbytes!'}, d)")
    assert res.stdout == "True 4.5\n"

    res = execute(kc, "s = {1, 2}")
    res = execute(kc, "%%sandbox --in s\npass")
    assert res.status == "error"
    assert "--in s is a builtins.set" in res.error_text and "JSON" in res.error_text
    res = execute(kc, "%%sandbox --out f\nimport threading\nf = threading.Lock()")
    assert res.status == "error" and "--out f" in res.error_text
    res = execute(kc, "%%sandbox --out nothere\npass")
    assert res.status == "error" and "did not define 'nothere'" in res.error_text


def test_interrupt_kills_the_sandbox(kc):
    km_interrupt = []
    pgid = os.getpgid(kernel_pid(kc))

    def on_output(o: Output) -> None:
        if "started" in o.text and not km_interrupt:
            km_interrupt.append(time.monotonic())
            # jupyter_client's signal-mode interrupt: SIGINT to the kernel's process group
            os.killpg(pgid, signal.SIGINT)

    t0 = time.monotonic()
    res = execute(
        kc,
        "%%sandbox\nimport time\nprint('started', flush=True)\ntime.sleep(60)",
        on_output=on_output,
    )
    assert km_interrupt, "the cell never started"
    assert res.status == "error"
    assert res.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "interrupted" in res.error_text and "killed" in res.error_text
    assert "nskernel" not in res.error_text
    assert time.monotonic() - t0 < 20
    assert execute(kc, "%%sandbox\nprint(1)").stdout == "1\n"


def kernel_pid(kc) -> int:
    res = execute(kc, "import os; print(os.getpid())")
    return int(res.stdout)


def test_timeout_kills_with_a_message(kc):
    t0 = time.monotonic()
    res = execute(kc, "%%sandbox --timeout 1\nprint('go', flush=True)\nimport time\ntime.sleep(60)")
    assert time.monotonic() - t0 < 15
    assert res.status == "error"
    assert res.reply["content"]["ename"] == "SandboxTimeout"
    assert "--timeout 1 s" in res.error_text and "killed" in res.error_text
    assert res.stdout == "go\n"


def test_named_lifecycle(kc):
    res = execute(kc, "%%sandbox --name web1 --hostname web1\nimport os\ncounter = 41\nos.getpid()")
    assert res.status == "ok", res.error_text
    res = execute(
        kc,
        "%%sandbox --name web1\ncounter += 1\nimport socket\nprint(counter, socket.gethostname())",
    )
    assert res.stdout == "42 web1\n", res.error_text

    res = execute(kc, "%%sandbox --name web1 --pid\npass")
    assert res.status == "error"
    assert "already exists" in res.error_text and "%sandbox rm web1" in res.error_text

    res = execute(kc, "%sandbox ls")
    assert res.status == "ok"
    assert "web1" in res.result and "NAMESPACES" in res.result

    res = execute(
        kc,
        "info = %sandbox inspect web1\nimport json\nprint(json.dumps(dict(info)))",
    )
    info = res.json_line()
    assert info["name"] == "web1" and info["hostname"] == "web1"
    for key in ("pid", "ips", "namespaces", "uid_map", "gid_map"):
        assert key in info
    assert set(info["namespaces"]) >= {"pid", "net", "mnt", "uts", "ipc", "user"}
    assert info["namespaces"]["net"] != host_namespaces()["net"]
    pid = info["pid"]
    os.kill(pid, 0)  # a host PID: the sandbox's init
    with open(f"/proc/{pid}/uid_map") as f:
        assert [int(x) for x in f.read().split()] == [x for row in info["uid_map"] for x in row]
    if not IS_ROOT:
        assert info["uid_map"][0][:2] == [0, os.getuid()]  # host view: root is the user
    html = execute(kc, "%sandbox inspect web1").outputs[-1].content["data"]["text/html"]
    assert "<table" in html and "web1" in html

    res = execute(kc, "%sandbox rm web1")
    assert res.status == "ok" and "web1" in res.stdout
    assert wait_gone(pid)
    res = execute(kc, "%sandbox inspect web1")
    assert res.status == "error" and "no sandbox named 'web1'" in res.error_text


def test_rm_all_and_state_after_interrupt(kc):
    for n in ("a1", "a2"):
        assert execute(kc, f"%%sandbox --name {n} --pid --uts\nv = '{n}'").status == "ok"
    ls = execute(kc, "%sandbox ls").result
    assert "a1" in ls and "a2" in ls
    res = execute(kc, "%sandbox rm --all")
    assert "a1" in res.stdout and "a2" in res.stdout
    assert "no named sandboxes" in execute(kc, "%sandbox ls").result


def test_bad_arguments_give_usage_errors(kc):
    cases = {
        "%%sandbox --bogus\npass": "unrecognized arguments",
        "%%sandbox --timeout soon\npass": "invalid float value",
        "%%sandbox --hostname 'no good!'\npass": "invalid hostname",
        "%%sandbox --bind :/x\npass": "expected SRC or SRC:DST",
        "%%sandbox --bind /nonexistent-nsk\npass": "no such file or directory",
        "%%sandbox --pid --hostname h\npass": "needs a UTS namespace",
        "%sandbox": "needs a command",
        "%sandbox frobnicate": "unknown command",
        "%sandbox inspect": "usage: %sandbox inspect NAME",
        "%sandbox rm nosuch": "no sandbox named 'nosuch'",
    }
    for code, expected in cases.items():
        res = execute(kc, code)
        assert res.status == "error", code
        assert expected in res.error_text, (code, res.error_text)
    res = execute(kc, "%%sandbox?")
    page = str(res.reply["content"].get("payload"))
    assert "--pid" in page and "--name" in page and "--timeout" in page
    assert execute(kc, "%%sandbox\nprint('fine')").stdout == "fine\n"


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_named_sandboxes_end_with_the_kernel(how):
    with kernel() as (km, kc):
        res = execute(kc, "%%sandbox --name keep\nx = 1")
        assert res.status == "ok", res.error_text
        res = execute(
            kc,
            "from nskernel.magics.client import get_client\n"
            "info = %sandbox inspect keep\n"
            "print(info['pid'], get_client().server_pid)",
        )
        sandbox_pid, server_pid = map(int, res.stdout.split())
        kpid = km.provisioner.process.pid
        if how == "sigkill":
            os.kill(kpid, signal.SIGKILL)
        else:
            km.shutdown_kernel(now=False)
        assert wait_gone(server_pid), "the sandbox server outlived its kernel"
        assert wait_gone(sandbox_pid), "a named sandbox outlived its kernel"


@pytest.mark.parametrize("how", ["shutdown", "sigkill-server"])
def test_sandboxes_being_made_end_with_the_server(how):
    """Cells back to back: the server sets the next cell's sandbox up while a cell runs.
    Whether its kernel shuts down or the server itself is SIGKILLed meanwhile, nothing
    of the sandboxes it was making (or had made) is left."""
    with kernel() as (km, kc):
        assert execute(kc, "%%sandbox\npass").status == "ok"
        res = execute(
            kc, "from nskernel.magics.client import get_client\nprint(get_client().server_pid)"
        )
        server_pid = int(res.stdout)
        ids = [kc.execute("%%sandbox\npass", allow_stdin=False) for _ in range(40)]
        replies = 0
        while replies < 5:  # well into the run: a sandbox is being made for the next
            if kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") in ids:
                replies += 1
        made = descendants(server_pid)
        if how == "sigkill-server":
            os.kill(server_pid, signal.SIGKILL)
        else:
            km.shutdown_kernel(now=False)
        assert wait_gone(server_pid), "the sandbox server outlived its kernel"
        left = [p for p in made + descendants(server_pid) if wait_gone(p) is False]
        assert not left, f"left behind: {left}"


def test_show_and_compare_use_the_widget_panel(kc):
    res = execute(kc, "%%sandbox --show --hostname shown\nprint('hi')")
    assert res.status == "ok", res.error_text
    panel = [o for o in res.outputs if o.kind == "display_data"]
    assert panel, res.outputs
    data = panel[-1].content["data"]
    assert "application/vnd.jupyter.widget-view+json" in data
    text = data["text/plain"]
    assert "host | shown" in text and "exited" not in text, text
    assert execute(kc, "%%sandbox --name cmp1 --hostname cmp1\npass").status == "ok"
    res = execute(kc, "%sandbox compare cmp1")
    assert res.status == "ok", res.error_text
    assert "host | cmp1" in res.outputs[-1].content["data"]["text/plain"]
    execute(kc, "%sandbox rm cmp1")


def test_rootless_sandboxes_live_in_the_servers_user_namespace(kc):
    res = execute(kc, "%%sandbox --name nest1 --net\npass\n")
    assert res.status == "ok", res.error_text
    res = execute(
        kc,
        "from nskernel.magics.client import get_client\n"
        "info = %sandbox inspect nest1\n"
        "print(info['pid'], get_client().server_pid, get_client().hello['userns'])",
    )
    pid, server_pid, mode = res.stdout.split()
    server_userns = os.stat(f"/proc/{server_pid}/ns/user").st_ino
    sandbox_userns = os.stat(f"/proc/{pid}/ns/user").st_ino
    if IS_ROOT:
        assert mode == "host" and server_userns == host_namespaces()["user"]
        assert sandbox_userns != server_userns  # sandbox root is never host root
    else:
        # The server made its own user namespace (where it holds CAP_NET_ADMIN over every
        # sandbox); each sandbox still gets a fresh one of its own, nested in it.
        assert mode == "own" and server_userns != host_namespaces()["user"]
        with open(f"/proc/{server_pid}/uid_map") as f:
            assert f.read().split()[:2] == ["0", str(os.getuid())]
        assert sandbox_userns not in (server_userns, host_namespaces()["user"])
    execute(kc, "%sandbox rm nest1")


def test_interrupting_a_named_sandbox_keeps_its_state(kc):
    assert execute(kc, "%%sandbox --name keep1\nstate = 'kept'").status == "ok"
    pgid = os.getpgid(kernel_pid(kc))
    sent = []

    def on_output(o: Output) -> None:
        if "started" in o.text and not sent:
            sent.append(1)
            os.killpg(pgid, signal.SIGINT)

    res = execute(
        kc,
        "%%sandbox --name keep1\nimport time\nprint('started', flush=True)\ntime.sleep(60)",
        on_output=on_output,
    )
    assert sent and res.status == "error"
    assert res.reply["content"]["ename"] == "KeyboardInterrupt"
    res = execute(kc, "%%sandbox --name keep1\nprint(state)")
    assert res.stdout == "kept\n", res.error_text
    execute(kc, "%sandbox rm keep1")


def test_a_sandbox_that_dies_mid_cell_fails_it_clearly(kc):
    assert execute(kc, "%%sandbox --name gone1\nx = 1").status == "ok"
    res = execute(kc, "%%sandbox --name gone1\nimport os\nos._exit(3)")
    assert res.status == "error"
    assert res.reply["content"]["ename"] == "SandboxDied"
    assert "exit status 3" in res.error_text and "'gone1' is gone" in res.error_text
    assert "gone1" not in execute(kc, "%sandbox ls").result
    res = execute(kc, "%%sandbox --name gone1\nprint('x' in dir())")
    assert res.stdout == "False\n"  # a fresh sandbox under the same name
    res = execute(kc, "%%sandbox --name gone1 --timeout 0.5\nimport time\ntime.sleep(30)")
    assert res.reply["content"]["ename"] == "SandboxTimeout"
    assert "sandbox 'gone1' was removed" in res.error_text
    assert "gone1" not in execute(kc, "%sandbox ls").result


def test_bind_and_ro_bind(kc, tmp_path):
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    for d in (rw, ro):
        d.mkdir()
        d.chmod(0o777)  # as root, sandbox root is an unprivileged host uid
    (ro / "in.txt").write_text("from the host")
    os.chmod(tmp_path, 0o755)
    code = (
        f"%%sandbox --bind {rw}:/tmp/out --ro-bind {ro}:/tmp/in\n"
        "print(open('/tmp/in/in.txt').read())\n"
        "open('/tmp/out/made.txt', 'w').write('from the sandbox')\n"
        "try:\n    open('/tmp/in/x', 'w')\nexcept OSError as e:\n    print('ro:', e.errno)\n"
    )
    res = execute(kc, code)
    assert res.status == "ok", res.error_text
    assert res.stdout == "from the host\nro: 30\n"  # EROFS
    assert (rw / "made.txt").read_text() == "from the sandbox"
    assert res.stderr == ""  # writable as it is: no idmapping, no warning


@pytest.mark.root
def test_as_root_a_users_bind_is_writable_and_roots_is_not(kc, private_dir):
    # Sandbox root is an unprivileged host uid: a bind owned by a user is idmapped so the
    # cell writes as that user; one owned by root stays read-only, and the cell says why.
    os.chmod(private_dir, 0o755)
    theirs = os.path.join(private_dir, "user-owned")
    roots = os.path.join(private_dir, "root-owned")
    for d in (theirs, roots):
        os.mkdir(d, 0o755)
    os.chown(theirs, 4321, 4322)
    code = (
        f"%%sandbox --bind {theirs} --bind {roots}\n"
        f"open('{theirs}/made.txt', 'w').write('from the sandbox')\n"
        f"try:\n    open('{roots}/x', 'w')\n"
        "except OSError as e:\n    print('root-owned:', e.errno)\n"
    )
    res = execute(kc, code)
    assert res.status == "ok", res.error_text
    assert res.stdout == "root-owned: 13\n"  # EACCES
    st = os.stat(os.path.join(theirs, "made.txt"))
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert f"{roots} belongs to root (owner or group), so it stays read-only" in res.stderr
    assert theirs not in res.stderr
    assert os.listdir(roots) == []


def test_a_flood_of_prints_arrives_whole_and_in_order(kc):
    res = execute(kc, "%%sandbox\nimport sys\nfor i in range(20000):\n    print(i)\n", timeout=60)
    assert res.status == "ok", res.error_text
    assert res.stdout == "".join(f"{i}\n" for i in range(20000))


def test_a_working_directory_under_tmp(kc, tmp_path):
    os.chmod(tmp_path, 0o777)
    back = execute(kc, "import os; print(os.getcwd())").stdout.strip()
    try:
        execute(kc, f"os.chdir({str(tmp_path)!r})")
        (tmp_path / "data.txt").write_text("next to the notebook\n")
        # The notebook's directory stays reachable, read-only, though /tmp is private.
        res = execute(
            kc,
            "%%sandbox\nimport os\nprint(os.getcwd(), open('data.txt').read(), end='')\n"
            "open('new.txt', 'w')",
        )
        assert res.stdout == f"{tmp_path} next to the notebook\n", res.error_text
        assert "Read-only file system" in res.error_text
        # The directory itself cannot be bound writable (the kernel imports from it); a
        # subdirectory can, and the cell still runs in the directory.
        (tmp_path / "out").mkdir()
        os.chmod(tmp_path / "out", 0o777)
        res = execute(
            kc, "%%sandbox --bind ./out\nimport os\nprint(os.getcwd())\nopen('out/new.txt', 'w')"
        )
        assert res.stdout == f"{tmp_path}\n", res.error_text
        assert (tmp_path / "out" / "new.txt").exists()  # --bind makes it writable
        res = execute(kc, "%%sandbox --pid\nimport os\nprint(os.getcwd())")  # --pid: mnt too
        assert res.stdout == f"{tmp_path}\n", res.error_text
    finally:
        execute(kc, f"os.chdir({back!r})")


@pytest.mark.userns
def test_limits_contain_a_cell_and_the_kernel_keeps_working(kc):
    bomb = (
        "%%sandbox --pids 16 --timeout 20\n"
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print('refused after', n)\n"
    )
    out = execute(kc, bomb)
    assert out.status == "ok", out.error_text
    assert "refused after" in out.stdout and int(out.stdout.split()[-1]) < 16
    hog = "%%sandbox --memory 64M\nx = bytearray(400 * 1024 * 1024)\nprint('allocated')"
    out = execute(kc, hog)
    assert out.status == "error" and "allocated" not in out.stdout
    if IS_ROOT:  # a writable v1 memory cgroup here: the kernel's OOM killer ends it
        assert "killed: memory limit 64 MiB reached" in out.error_text
    else:  # an rlimit on the address space: the allocation fails instead
        assert "MemoryError" in out.error_text
    assert execute(kc, "print(6 * 7)").stdout == "42\n"


def test_bad_limits_are_usage_errors(kc):
    out = execute(kc, "%%sandbox --memory lots\npass")
    assert out.status == "error" and "invalid size 'lots'" in out.error_text
    assert execute(kc, "print('fine')").stdout == "fine\n"


def test_runaway_output_is_truncated_with_a_note(kc):
    code = (
        "%%sandbox --max-output 1M\n"
        "import sys\n"
        "for i in range(64):\n"
        "    sys.stdout.write('x' * 1024 * 1024)\n"
        "print('the end')\n"
    )
    out = execute(kc, code, timeout=120)
    assert out.status == "ok", out.error_text
    assert len(out.stdout) == 1024 * 1024 and "the end" not in out.stdout
    assert "output truncated after 1 MiB; 63.0 MiB more was dropped" in out.stderr
    assert "--max-output" in out.stderr
    assert execute(kc, "%%sandbox\nprint('next')").stdout == "next\n"


def test_a_misplaced_cell_magic_is_explained_and_sandboxed_lines_never_run(kc, tmp_path):
    marker = tmp_path / "ran"
    out = execute(kc, f"x = 1\n%%sandbox\nopen({str(marker)!r}, 'w').close()")
    assert out.status == "error"
    assert "%%sandbox must be the first line of its cell" in out.error_text
    assert not marker.exists(), "a line meant for the sandbox ran in the kernel"
    bad = execute(kc, "%%sandbox --max-output lots\npass")
    assert bad.status == "error" and "--max-output" in bad.error_text


def test_inspect_says_which_mechanism_enforces_each_limit(kc):
    assert execute(kc, "%%sandbox --name limited1 --pids 40 --memory 128M\npass").status == "ok"
    try:
        out = execute(
            kc, "info = %sandbox inspect limited1\nimport json; print(json.dumps(info['limits']))"
        )
        limits = out.json_line()
        assert limits["pids"]["value"] == 40 and limits["memory"]["value"] == 128 << 20
        expected = "cgroup v1" if IS_ROOT else "rlimit RLIMIT_NPROC"
        assert limits["pids"]["mechanism"].startswith(expected)
    finally:
        execute(kc, "%sandbox rm limited1")


def test_sigkill_of_the_sandbox_server_loses_nothing_silently():
    with kernel() as (_km, kc):
        assert execute(kc, "%%sandbox --name keep1\nx = 5").status == "ok"
        out = execute(
            kc, "from nskernel.magics.client import get_client\nprint(get_client().server_pid)"
        )
        server = int(out.stdout)
        with open(f"/proc/{server}/task/{server}/children") as f:
            sandboxes = [int(p) for p in f.read().split()]
        os.kill(server, signal.SIGKILL)
        for pid in sandboxes:  # their lifelines closed with the server
            assert wait_gone(pid), f"sandbox process {pid} outlived its server"
        out = execute(kc, "%%sandbox --name keep1\nprint(x)")
        assert out.status == "error"
        assert "named sandbox 'keep1' was lost with its state" in out.error_text
        assert "killed by signal 9" in out.error_text
        assert execute(kc, "%%sandbox\nprint('fresh')").stdout == "fresh\n"
        again = execute(kc, "%%sandbox --name keep1\nprint('x' in globals())")
        assert again.stdout == "False\n"  # created afresh, as the message said
        execute(kc, "%sandbox rm keep1")
