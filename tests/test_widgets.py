"""The compare panel's rendering and behaviour, on recorded facts and real sandboxes.

The kernel and browser tests (tests/test_widgets_kernel.py, tests/test_widgets_browser.py)
check the same panel through a real kernel and a real JupyterLab.
"""

from __future__ import annotations

import configparser
import copy
import json
import re

import pytest

from nskernel import Sandbox, SandboxSpec, facts, widgets
from tests.facts_helpers import load

TIERS = ["root", "rootless"]


def _places(tier: str) -> list[dict]:
    return [
        load(f"host-{tier}.json"),
        load(f"sandbox-from-host-{tier}.json"),
        load(f"sandbox-uts-only-inside-{tier}.json"),
    ]


def _sanitized(text: str) -> str:
    return re.sub(widgets.NBVAL_SANITIZE, "~", text)


@pytest.mark.parametrize("tier", TIERS)
def test_text_form_is_deterministic_and_says_own_or_shared(tier: str) -> None:
    text = widgets.render_text(_places(tier))
    assert text.splitlines()[0] == "nskernel compare: host | web1 | uts1"
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert rows["net"] == ["host", "own", "shared"]
    assert rows["uts"] == ["host", "own", "own"]
    assert rows["cgroup"] == ["host", "shared", "shared"]
    assert rows["user"] == ["host", "own", "shared" if tier == "root" else "own"]
    # Nothing run-dependent: no PIDs, inode numbers or addresses.
    assert not re.search(r"\d{3,}|127\.0\.0\.1", text)


def test_text_form_is_the_same_for_a_different_run() -> None:
    a = _places("root")
    b = copy.deepcopy(a)
    for place in b:
        place["namespaces"] = {t: n + 1000 for t, n in place["namespaces"].items()}
        for p in place["processes"]:
            p["pid"] += 7
        place["interfaces"] = [dict(i, addresses=["10.9.9.9/24"]) for i in place["interfaces"]]
    assert widgets.render_text(a) == widgets.render_text(b)
    assert _sanitized(widgets.render_html(a)) == _sanitized(widgets.render_html(b))
    assert widgets.render_html(a) != widgets.render_html(b)


@pytest.mark.parametrize("tier", TIERS)
def test_html_shows_the_values_and_highlights_differences(tier: str) -> None:
    host, sb, uts = _places(tier)
    page = widgets.render_html([host, sb, uts])
    assert page.count("class='nsk-place'") == 3
    assert page.count("data-kind='sandbox'") == 2
    assert "web1" in page and "uts1" in page
    # The sandbox's PID table: inside PID 1 with its host PID; own namespaces marked.
    init = next(p for p in sb["processes"] if p["pid"] == 1)
    col = widgets.column_html(sb, host)
    assert re.search(rf"<!--nsk:v-->1<!--/nsk:v-->.*?<!--nsk:v-->{init['host_pid']}<", col)
    assert col.count("<b>own</b>") == 6 and col.count(">shared<") == 1
    assert str(sb["namespaces"]["net"]) in col
    # The host's table highlights the sandbox's processes, first.
    host_col = widgets.column_html(host, None)
    assert "<b>[web1]</b>" in host_col
    first_row = host_col.split("command</th></tr>", 1)[1].split("</tr>", 1)[0]
    assert "[web1]" in first_row
    # The uts-only sandbox shares the host's network: its interfaces are the host's.
    uts_col = widgets.column_html(uts, host)
    assert uts_col.count("<b>own</b>") == (1 if tier == "root" else 2)


def test_exited_and_unavailable_are_explained_not_raised() -> None:
    host = load("host-root.json")
    gone = facts.exited_facts("web9", why="the sandbox has exited (PID 4242 is gone)")
    broken = facts.normalize(load("sandbox-inside-root.json"))
    del broken["namespaces"]["cgroup"]
    broken["errors"]["namespace.cgroup"] = "this kernel has no cgroup namespaces"
    text = widgets.render_text([host, gone, broken])
    assert "web9 (exited)" in text
    assert re.search(r"^cgroup\s+host\s+-\s+unavailable$", text, re.M)
    page = widgets.render_html([host, gone, broken])
    assert "This sandbox has exited." in page and "PID 4242 is gone" in page
    assert "unavailable: this kernel has no cgroup namespaces" in page
    assert "Traceback" not in page


def test_nbval_sanitize_config_parses() -> None:
    cfg = configparser.ConfigParser()
    cfg.read_string(widgets.nbval_sanitize_config())
    section = cfg[cfg.sections()[0]]
    assert re.sub(section["regex"], section["replace"], "a<!--nsk:v-->9\n9<!--/nsk:v-->b") == "a~b"


def test_places_protocol() -> None:
    snap = load("sandbox-inside-root.json")
    calls = []

    def live() -> dict:
        calls.append(1)
        return snap

    def broken() -> dict:
        raise RuntimeError("the sandbox server is not running")

    panel = widgets.compare(snap, live, broken, host=load("host-root.json"))
    assert [p["name"] for p in panel.places] == ["host", "web2", "web2", "place 3"]
    assert panel.places[3]["alive"] is None
    assert "the sandbox server is not running" in panel.columns.children[3].value
    assert len(calls) == 1
    panel.refresh_button.click()
    assert len(calls) == 2
    with pytest.raises(TypeError, match="a place is a facts dict"):
        widgets.compare(42)


def test_mimebundle_has_widget_text_and_html() -> None:
    panel = widgets.compare(load("sandbox-from-host-root.json"), host=load("host-root.json"))
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == widgets.render_text(panel.places)
    assert bundle["text/html"] == widgets.render_html(panel.places)
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.model_id
    panel.close()


def test_compare_without_places_in_a_sandboxed_kernel(monkeypatch, tmp_path) -> None:
    # The launcher captured host facts; here "this sandbox" is simply the caller.
    path = str(tmp_path / "host.json")
    captured = facts.capture_host_facts(path)
    captured["namespaces"]["uts"] += 1  # pretend the kernel has its own UTS namespace
    with open(path, "w") as f:
        json.dump(captured, f)
    monkeypatch.setenv(facts.HOST_FACTS_ENV, path)
    panel = widgets.compare()
    assert [p["name"] for p in panel.places] == ["host", "this sandbox"]
    assert panel.places[1]["kind"] == "sandbox"
    assert re.search(r"^uts\s+host\s+own$", panel.text(), re.M)
    assert re.search(r"^net\s+host\s+shared$", panel.text(), re.M)


@pytest.mark.userns
@pytest.mark.spawns_here
def test_refresh_after_the_sandbox_exits() -> None:
    sb = Sandbox.spawn(SandboxSpec(hostname="refresh1"), ["sleep", "60"])
    try:
        panel = widgets.compare(sb)
        assert panel.places[1]["hostname"] == "refresh1"
        host_rows = [r for r in panel.places[0]["processes"] if r.get("sandbox")]
        assert {r["pid"] for r in host_rows} == {
            p["host_pid"] for p in panel.places[1]["processes"]
        }
        assert "refresh1" in panel.columns.children[1].value
    finally:
        sb.kill()
    panel.refresh()
    assert panel.places[1]["alive"] is False
    assert "This sandbox has exited." in panel.columns.children[1].value
    assert "(exited)" in panel.text()
    assert not any(r.get("sandbox") for r in panel.places[0]["processes"])
