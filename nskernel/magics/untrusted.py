"""Output from a sandbox is untrusted: what of it may reach the user's browser, and how.

**The rule.** What a ``%%sandbox`` cell (or a named sandbox) displays is written by the
code in the sandbox. A notebook frontend runs active output of a cell it executed —
``application/javascript``, ``<script>`` and event handlers in HTML — in the page, with
the user's Jupyter token: code outside the sandbox that can drive the server, open
terminals and read every file the user can. So by default, before the kernel publishes a
sandbox's display data or result, this module keeps only what is inert in a browser:

- **kept as sent**: ``text/plain``, ``application/json``, ``text/latex`` (MathJax, in its
  safe mode in JupyterLab), ``image/png``, ``image/jpeg``, ``image/gif``, ``image/webp``,
  ``image/bmp`` (drawn as ``<img>``);
- **sanitized**: ``text/html``, by nh3 (the Rust ammonia sanitizer, an HTML5 parser with
  allow-lists; no regular expressions): no ``<script>``, ``<iframe>``, ``<object>``,
  ``<embed>``, ``<form>``/inputs/buttons, ``<svg>``/``<math>``, ``<meta>``, ``<base>``,
  ``<link>``, and no event handler or other unlisted attribute (``data-*`` included:
  JupyterLab runs commands named in ``data-commandlinker-command``). Links only to
  http(s), mailto or relative targets; images only as ``data:`` URLs of images, because
  fetching a URL would let a sandbox without a network send data out through the
  browser. CSS, in ``style`` attributes and ``<style>`` elements, keeps only declarations
  of an allow-list of colour, font, text, box and table properties whose values use no
  function but colours, ``calc()``-like arithmetic, ``var()`` and gradients: nothing
  that loads a URL, and no ``position``/``transform`` to leave the output's box.
  ``<style>`` rules apply only inside their own output: the HTML is wrapped in a
  ``<div>`` with a class made for it, and every selector is prefixed with it (pandas'
  ``<style scoped>`` and Styler tables keep their look). A stylesheet that is not plain
  rules (at-rules, comments, strings, escapes) is dropped whole. Class names of
  JupyterLab's own (``jp-``, ``lm-``...) are dropped, so output cannot wear its UI;
- ``text/markdown`` is kept as sent when it is inert: no raw HTML (nh3 finds none) and
  no link or image whose target is other than http(s)/mailto/relative (images: not from
  the web either). This check is deliberately conservative; markdown that fails it is
  shown as its text instead;
- ``image/svg+xml`` is converted to ``<img src="data:image/svg+xml;base64,...">`` in
  ``text/html``: a browser draws an SVG image in secure static mode (no scripts, no
  ``foreignObject`` interaction, no external loads). That is also how JupyterLab draws
  SVG output, so it looks the same;
- ``application/vnd.jupyter.widget-view+json`` is dropped unless the sandbox itself
  created the model (none can yet: comms are not relayed from sandboxes): a view of a
  model id names one of the *kernel's* widgets, whose callbacks run in the kernel;
- **everything else is dropped**: every JavaScript type, and renderer payloads of
  extensions (Vega, Plotly, Bokeh...), which execute code or fetch URLs.

Display ids of a sandbox's ``transient`` data are prefixed, so it updates only its own
displays, never the kernel's. Whatever is removed is counted; the cell ends with one
note naming it and saying that ``--trust-output`` shows output as sent. With
``--trust-output`` nothing here applies: that cell's output reaches the browser as the
sandbox sent it.

**The sandboxed kernel** ("Python 3 (sandboxed)") is different: it is a kernel like any
other, and its outputs go to the frontend unchanged. The frontend trusts the output of
cells it runs, as it does for every kernel (JupyterLab sanitizes only outputs of
notebooks that were not trusted when opened). The sandbox protects the machine from the
code; it does not protect the browser from what that code displays. Code you do not trust
belongs in ``%%sandbox`` cells of an ordinary kernel, whose output is made inert here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import html.parser
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import nh3

# ------------------------------------------------------------------ mime types

INERT_TYPES = frozenset(
    {
        "text/plain",
        "application/json",
        "text/latex",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
    }
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# ------------------------------------------------------------------ HTML

TAGS = frozenset(
    {
        # text
        "a", "abbr", "acronym", "b", "bdi", "bdo", "big", "blockquote", "br", "center",
        "cite", "code", "data", "del", "dfn", "em", "font", "i", "ins", "kbd", "mark",
        "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "time", "tt",
        "u", "var", "wbr", "rp", "rt", "rtc", "ruby",
        # blocks
        "address", "article", "aside", "caption", "details", "div", "dl", "dd", "dt",
        "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hgroup", "hr", "li", "nav", "ol", "p", "pre", "section", "summary", "ul",
        # tables
        "col", "colgroup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
        # images (src checked below), stylesheets (rules confined below)
        "img", "style",
    }
)  # fmt: skip
# Whose content goes with them (the rest of a removed element keeps its text).
CLEAN_CONTENT_TAGS = frozenset(
    {"script", "iframe", "object", "embed", "noscript", "template", "textarea", "select"}
)
GENERIC_ATTRIBUTES = frozenset(
    {"class", "id", "style", "title", "lang", "dir", "align", "valign", "width", "height"}
)
ATTRIBUTES = {
    "a": {"href", "hreflang"},
    "img": {"src", "alt"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "headers", "nowrap"},
    "th": {"colspan", "rowspan", "headers", "scope", "nowrap", "abbr"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "time": {"datetime"},
    "data": {"value"},
    "details": {"open"},
    "font": {"color", "face", "size"},
    "*": set(GENERIC_ATTRIBUTES),
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "data"})  # data: only for images, below
IMAGE_URL_PREFIXES = tuple(
    f"data:image/{t}" for t in ("png", "jpeg", "jpg", "gif", "webp", "bmp", "svg+xml")
)
# Classes of JupyterLab, Lumino and ipywidgets: wearing them, output could pose as
# JupyterLab's own UI (a dialog over the page).
RESERVED_CLASS_PREFIXES = ("jp-", "lm-", "p-", "jupyter-", "widget-", "mod-")

# ------------------------------------------------------------------ CSS

CSS_PROPERTIES = frozenset(
    {
        "color", "background", "background-color", "opacity",
        "font", "font-family", "font-size", "font-style", "font-variant", "font-weight",
        "font-stretch", "line-height", "letter-spacing", "word-spacing",
        "text-align", "text-decoration", "text-decoration-color", "text-decoration-line",
        "text-decoration-style", "text-indent", "text-overflow", "text-shadow",
        "text-transform", "white-space", "word-break", "word-wrap", "overflow-wrap",
        "vertical-align", "direction", "unicode-bidi",
        "border", "border-top", "border-right", "border-bottom", "border-left",
        "border-color", "border-style", "border-width", "border-radius",
        "border-top-color", "border-right-color", "border-bottom-color", "border-left-color",
        "border-top-style", "border-right-style", "border-bottom-style", "border-left-style",
        "border-top-width", "border-right-width", "border-bottom-width", "border-left-width",
        "border-top-left-radius", "border-top-right-radius", "border-bottom-left-radius",
        "border-bottom-right-radius", "border-collapse", "border-spacing", "outline",
        "box-shadow", "box-sizing",
        "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
        "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
        "width", "height", "min-width", "min-height", "max-width", "max-height",
        "display", "visibility", "float", "clear", "overflow", "overflow-x", "overflow-y",
        "flex", "flex-basis", "flex-direction", "flex-flow", "flex-grow", "flex-shrink",
        "flex-wrap", "justify-content", "align-content", "align-items", "align-self",
        "gap", "row-gap", "column-gap", "order",
        "grid-template-columns", "grid-template-rows", "grid-column", "grid-row",
        "table-layout", "caption-side", "empty-cells", "list-style-type",
        "list-style-position",
    }
)  # fmt: skip
# The only functions a CSS value may call: none of them loads anything. (url(),
# image-set(), image(), element(), cross-fade(), src() and the like are refused.)
CSS_FUNCTIONS = frozenset(
    {
        "rgb", "rgba", "hsl", "hsla", "hwb", "lab", "lch", "oklab", "oklch", "color",
        "color-mix", "calc", "min", "max", "clamp", "var", "minmax", "repeat",
        "fit-content", "linear-gradient", "radial-gradient", "conic-gradient",
        "repeating-linear-gradient", "repeating-radial-gradient",
    }
)  # fmt: skip
_SELECTOR_PUNCTUATION = frozenset(" \t\r\n-_.#:,>+~*()[]=^$|")

_style_cleaner = nh3.Cleaner(
    tags={"span"},
    attributes={"span": {"style"}},
    filter_style_properties=set(CSS_PROPERTIES),
    strip_comments=True,
    link_rel=None,
)


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside quotes and parentheses."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _functions(value: str) -> set[str]:
    """Names of the functions a CSS value calls (``name(``), lowercased."""
    names = set()
    for i, c in enumerate(value):
        if c == "(":
            j = i
            while j > 0 and (value[j - 1].isalnum() or value[j - 1] in "-_"):
                j -= 1
            names.add(value[j:i].lower())
    return names


def css_declarations(text: str, removed: Counter[str] | None = None) -> str:
    """The declarations of ``text`` (``prop: value; ...``) that are safe, normalized.

    nh3 parses them (with a real CSS tokenizer: escapes decoded, comments and at-rules
    gone) and keeps only allow-listed properties; then any declaration whose value calls
    a function not in CSS_FUNCTIONS, or holds characters that could end a rule or a
    ``<style>`` element, is dropped too. What was dropped is counted in ``removed``.
    """
    kept, dropped = _css_declarations(text)
    if removed is not None:
        for name in dropped:
            removed[f"{name}:"] += 1
    return kept


@functools.lru_cache(maxsize=1024)  # tables and the widgets repeat the same few styles
def _css_declarations(text: str) -> tuple[str, tuple[str, ...]]:
    out = _style_cleaner.clean(f'<span style="{html.escape(text, quote=True)}"></span>')
    start = out.find(' style="')
    normalized = html.unescape(out[start + 8 : out.index('"', start + 8)]) if start >= 0 else ""
    kept, names = [], set()
    for decl in _split_top(normalized, ";"):
        name, _, value = decl.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not name or not value:
            continue
        if any(c in value for c in "{}<>\\@") or not _functions(value) <= CSS_FUNCTIONS:
            continue
        kept.append(f"{name}: {value}")
        names.add(name)
    dropped = tuple(n for n in _property_names(text) if n not in names)
    return "; ".join(kept), dropped


def _property_names(text: str) -> list[str]:
    names = []
    for decl in _split_top(text, ";"):
        name = decl.partition(":")[0].strip().lower()
        if name and all(c.isalnum() or c == "-" for c in name):
            names.append(name)
    return names


def confine_stylesheet(css: str, scope: str, removed: Counter[str] | None = None) -> str | None:
    """The rules of a ``<style>`` element, each selector prefixed with ``.scope``.

    Only plain rules are accepted (``selector { declarations }``); a stylesheet with
    at-rules, comments, strings or escapes is refused whole (None). Selectors may use
    only identifier characters and selector punctuation, so a prefix confines them.
    """
    if any(c in css for c in "@\\\"'<") or "/*" in css:
        return None
    rules = []
    for chunk in css.split("}"):
        if not chunk.strip():
            continue
        if chunk.count("{") != 1:
            return None
        selector, decls = chunk.split("{")
        selector = selector.strip()
        if not selector or not all(c.isalnum() or c in _SELECTOR_PUNCTUATION for c in selector):
            return None
        scoped = ", ".join(f".{scope} {s.strip()}" for s in _split_top(selector, ",") if s.strip())
        body = css_declarations(decls, removed)
        if body:
            rules.append(f"{scoped} {{ {body} }}")
    return "\n".join(rules)


# ------------------------------------------------------------------ what was removed


class _Removed(html.parser.HTMLParser):
    """What the policy removes from a fragment, by name, to say so in the note.

    Only for the note: what is removed is decided by nh3 with the allow-lists above;
    this reads the fragment once more (Python's parser, not nh3's) and applies the same
    lists to name what went. CSS that was dropped is counted where it is filtered.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.removed: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TAGS:
            if tag not in ("html", "head", "body"):  # wrappers a fragment does not have
                self.removed[f"<{tag}>"] += 1
            return
        if tag == "style":
            return  # its attributes (scoped, type, media) matter to no one
        allowed = ATTRIBUTES["*"] | ATTRIBUTES.get(tag, set())
        for name, value in attrs:
            if name not in allowed:
                # data-* carry no content; only the command linker's are worth a word
                if not name.startswith("data-") or "commandlinker" in name:
                    self.removed[f"{name}="] += 1
            elif name == "href" and not _link_ok(value or ""):
                self.removed["href="] += 1
            elif name == "src" and not _image_ok(value or ""):
                self.removed["src="] += 1


# Python's html.parser, which reads a fragment again for the note (nh3, which decides
# what goes, is linear), is quadratic in close(): it rescans the rest of its input for
# every "</" or "<?" that does not end (CVE-2025-6069; Debian's 3.11.2 has it): 400 KB
# of "</" kept the kernel busy ~11 s, past the cell's --timeout (red team 19 F4).
# feed() alone stops at the first construct that does not end and keeps the rest, in
# time linear in the fragment; close() then finishes a rest of at most this many
# characters (its cost bounded by their square: ~1 ms). A longer rest is not read.
CLOSE_AT_MOST = 4096
# In the note when a fragment's rest was not read (see CLOSE_AT_MOST): nh3 removed
# from it what the policy removes all the same, unnamed.
UNREAD = "anything unsafe after a tag that does not end (not itemized)"


def _parse_bounded(parser: html.parser.HTMLParser, text: str) -> bool:
    """Feed ``text`` to ``parser`` in linear time; False if a rest was left unread."""
    parser.feed(text)
    if len(parser.rawdata) > CLOSE_AT_MOST:
        return False
    parser.close()
    return True


def _removed_from(fragment: str) -> Counter[str]:
    p = _Removed()
    try:
        if not _parse_bounded(p, fragment):
            p.removed[UNREAD] += 1
    except Exception:  # a report only: never let it fail the display
        pass
    return p.removed


def _url_text(value: str) -> str:
    # As a browser reads a URL: ASCII tabs and newlines anywhere are ignored, and so are
    # control characters and spaces around it.
    value = "".join(c for c in value if c not in "\t\n\r")
    return value.strip("".join(map(chr, range(33)))).lower()


def _link_ok(value: str) -> bool:
    url = _url_text(value)
    scheme, colon, _ = url.partition(":")
    if not colon or not scheme[:1].isalpha() or any(c in scheme for c in "/?#"):
        return True  # no scheme: a relative link
    return scheme in ("http", "https", "mailto")


def _image_ok(value: str) -> bool:
    return _url_text(value).startswith(IMAGE_URL_PREFIXES)


class Sanitizer:
    """Makes one cell's output from a sandbox inert (see the module's docstring).

    ``id_scope`` names the sandbox (its display ids are prefixed with it);
    ``own_models`` returns the widget model ids the sandbox itself created (issue 16's
    comm relay will fill it; today it is empty).
    """

    def __init__(self, id_scope: str, own_models: Callable[[], Iterable[str]] = frozenset) -> None:
        self.id_scope = id_scope
        self.own_models = own_models
        self.removed: Counter[str] = Counter()
        self._html_removed: Counter[str] = Counter()
        self._style_mark = ""

    def _cleaner(self, nonce: str) -> nh3.Cleaner:
        return nh3.Cleaner(
            tags=set(TAGS),
            clean_content_tags=set(CLEAN_CONTENT_TAGS),
            attributes={k: set(v) for k, v in ATTRIBUTES.items()},
            attribute_filter=self._attribute,
            strip_comments=False,  # inert; the widgets' static HTML marks values with them
            url_schemes=set(URL_SCHEMES),
            set_tag_attribute_values={"style": {"data-nsk-style": nonce}},
        )

    # ---------------------------------------------------------- HTML

    def _attribute(self, tag: str, name: str, value: str) -> str | None:
        if name == "style":
            return css_declarations(value, self._html_removed) or None
        # Removed src/href are reported by _Removed.
        if name == "src":
            return value if _image_ok(value) else None
        if name == "href" and not _link_ok(value):
            return None  # nh3 let a data: URL through (allowed for images)
        if name == "class":
            kept = [c for c in value.split() if not c.lower().startswith(RESERVED_CLASS_PREFIXES)]
            if len(kept) < len(value.split()):
                self._html_removed["JupyterLab class names"] += 1
            return " ".join(kept) or None
        return value

    def html(self, fragment: str) -> str:
        """``fragment`` sanitized; what was removed is added to the cell's report."""
        self._html_removed = _removed_from(fragment)
        # Every <style> nh3 keeps gets this attribute, a nonce: the text "<style" can
        # occur inside a stylesheet, never this marker with its quotes (nh3 escapes
        # quotes in attribute values, and the nonce is new for each call).
        nonce = secrets.token_hex(8)
        self._style_mark = f'<style data-nsk-style="{nonce}">'
        clean = self._cleaner(nonce).clean(fragment)
        if self._style_mark in clean:
            clean = self._confine_styles(clean, fragment)
        for key, n in self._html_removed.items():
            self.removed[_describe(key)] += n
        return clean

    def _confine_styles(self, clean: str, original: str) -> str:
        """Prefix the rules of every ``<style>`` in nh3's output with a class of a new
        wrapper around it; drop a stylesheet that cannot be confined."""
        scope = "nsk-out-" + hashlib.sha256(original.encode("utf-8", "replace")).hexdigest()[:12]
        parts, pos = [], 0
        while True:
            start = clean.find(self._style_mark, pos)
            if start < 0:
                break
            body = start + len(self._style_mark)
            end = clean.find("</style>", body)  # a stylesheet cannot contain "</style"
            if end < 0:
                end = len(clean)
            parts.append(clean[pos:start])
            confined = confine_stylesheet(clean[body:end], scope, self._html_removed)
            if confined is None:
                self._html_removed["stylesheets that are not plain rules"] += 1
            elif confined:
                # Confined rules hold no "<" (confine_stylesheet refuses it), so they
                # cannot end the element early.
                parts.append(f"<style>{confined}</style>")
            pos = end + len("</style>")
        parts.append(clean[pos:])
        return f'<div class="{scope}">{"".join(parts)}</div>'

    # ---------------------------------------------------------- bundles

    def bundle(
        self, data: dict[str, Any], metadata: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A display's mime bundle and metadata, with only inert content left."""
        out: dict[str, Any] = {}
        for mime, value in data.items():
            if mime in INERT_TYPES:
                out[mime] = value
            elif mime == "text/html" and isinstance(value, str):
                out[mime] = self.html(value)
            elif mime in ("text/markdown", "image/svg+xml") and isinstance(value, str):
                continue  # below, once the bundle's other types are known
            elif mime == WIDGET_VIEW and self._own_widget(value):
                out[mime] = value
            else:
                self.removed[_describe_type(mime)] += 1
        md = data.get("text/markdown")
        if isinstance(md, str):
            why = markdown_problem(md)
            if why is None:
                out["text/markdown"] = md
            else:
                out["text/plain"] = md
                self.removed[f"markdown with {why} (shown as text)"] += 1
        svg = data.get("image/svg+xml")
        if isinstance(svg, str):
            if not {"text/html", "text/markdown", "text/latex"} & out.keys():
                b64 = base64.b64encode(svg.encode("utf-8", "replace")).decode("ascii")
                out["text/html"] = f'<img src="data:image/svg+xml;base64,{b64}" alt="SVG image">'
            if _svg_is_active(svg):
                self.removed["scripts and links in SVG images (drawn as static images)"] += 1
        meta = {
            k: v
            for k, v in metadata.items()
            if k in out or "/" not in k  # per-type metadata of removed types goes too
        }
        return out, meta

    def _own_widget(self, value: object) -> bool:
        model = value.get("model_id") if isinstance(value, dict) else None
        return isinstance(model, str) and model in set(self.own_models())

    def transient(self, transient: dict[str, Any]) -> dict[str, Any]:
        """Display ids made the sandbox's own: it can update only its own displays."""
        out = dict(transient)
        if "display_id" in out:
            out["display_id"] = f"nskernel-sandbox:{self.id_scope}:{out['display_id']}"
        return out

    def note(self) -> str | None:
        """One line saying what this cell's output lost, or None if nothing."""
        if not self.removed:
            return None
        items = [f"{what} ({n} times)" if n > 1 else what for what, n in self.removed.items()]
        shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
        return (
            f"[nskernel: output from the sandbox was made inert for the browser; removed: "
            f"{shown}. Run the cell with %%sandbox --trust-output to show it as sent.]"
        )


class _SvgScan(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "foreignobject") or any(
            n.startswith("on") or n.endswith("href") for n, _ in attrs
        ):
            self.active = True


def _svg_is_active(svg: str) -> bool:
    """Whether an SVG has scripts, handlers or links (that drawing it as an image stops):
    only for the note."""
    p = _SvgScan()
    try:
        if not _parse_bounded(p, svg):
            return True  # not read to its end: said to be active (it is drawn inert)
    except Exception:
        return True
    return p.active


def _describe_type(mime: str) -> str:
    if mime == WIDGET_VIEW:
        return "a widget view of a model the sandbox did not create"
    return mime


_DESCRIPTIONS = {
    "href=": "links to other than http(s), mailto or relative targets",
    "src=": "image URLs (only embedded data: images are shown)",
}


def _describe(key: str) -> str:
    if key in _DESCRIPTIONS:
        return _DESCRIPTIONS[key]
    if key.startswith("<") and key.endswith(">"):
        return f"HTML {key}"
    if key.endswith("="):
        name = key[:-1]
        return f"HTML {name}= (event handler)" if name.startswith("on") else f"HTML {name}="
    if key.endswith(":"):
        return f"CSS {key[:-1]}"
    return key


# ------------------------------------------------------------------ markdown


def markdown_problem(md: str) -> str | None:
    """None if ``md`` is inert markdown, else what is wrong (a few words).

    Conservative by design: it looks at every ``](`` and ``]:`` (where link and image
    targets and reference definitions are), wherever they are, and refuses any target
    with a scheme other than http(s)/mailto, with escapes or entities (which markdown
    decodes), and, if the text has any image, any target on the web (the browser would
    fetch it).
    """
    # nh3 finds the HTML a browser would parse; the scan below also refuses anything a
    # markdown renderer might take for the start of a tag, a comment or a declaration.
    if nh3.is_html(md) or _TAG_START.search(md):
        return "raw HTML"
    images = "![" in md
    # Linear in ``md`` (red team 19 F5: each marker's target was scanned to the next
    # whitespace, per character, so '](' * 40_000 took 100 s): a target's end is found
    # once per run of text without whitespace (later markers in it end there too), the
    # run is checked for escapes once, and only a target's first TARGET_HEAD
    # characters are looked at for its scheme; and there are MAX_LINKS targets at most.
    if md.count("](") + md.count("]:") > MAX_LINKS:
        return f"more than {MAX_LINKS} links"
    for marker in ("](", "]:"):
        i = md.find(marker)
        end = -1  # where the run of text the last target was in ends
        while i >= 0:
            j = i + 2
            while j < len(md) and md[j] in " \t\r\n":
                j += 1
            if j >= end:
                m = _WHITESPACE.search(md, j)
                end = m.start() if m else len(md)
                run = md[j:end]
                if "&" in run or "\\" in run:
                    return "a link target with escapes"
            head = md[j : min(end, j + TARGET_HEAD)].lstrip("<")
            why = _markdown_target(head, images, cut=end > j + TARGET_HEAD)
            if why:
                return why
            i = md.find(marker, i + 2)
    return None


# "<" before a letter (str.isalpha's: [^\W\d_] is a letter or a mark), "/", "!" or "?".
_TAG_START = re.compile(r"<(?:[^\W\d_]|[/!?])")
MAX_LINKS = 10_000
TARGET_HEAD = 256
_WHITESPACE = re.compile(r"[ \t\r\n]")


def _markdown_target(target: str, images: bool, cut: bool = False) -> str | None:
    """What is wrong with a link target (None: nothing); ``cut``: only its first
    TARGET_HEAD characters are given, and its scheme may lie beyond them."""
    if "&" in target or "\\" in target:
        return "a link target with escapes"
    if cut and not any(c in target for c in ":/?#"):
        return "a link target too long to check"
    head = target
    for stop in "/?#":
        head = head.split(stop, 1)[0]
    scheme = head.split(":", 1)[0].lower() if ":" in head else ""
    if scheme == "data" and target.lower().startswith("data:image/"):
        return None  # an embedded image: drawn, never run
    if scheme and scheme not in ("http", "https", "mailto"):
        return f"a {scheme}: link"
    if images and (scheme in ("http", "https") or target.startswith("//")):
        return "an image from the web"
    return None
