"""Issue 18 item 3: Markdown reports are inert when rendered.

Each report is rendered to HTML with a standard CommonMark library (markdown-it-py,
raw HTML enabled as most renderers have it, tables on) and the HTML is parsed: no tag
or attribute may come from a value. Hostile values go where users and files put them:
record fields, a customer's ref, a decommission reason.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from shredvault.vault import Vault, render_certificate_markdown, render_markdown
from shredvault.vault.markdown import md_code, md_text

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "</td></tr></table><iframe src=//evil>",
    "[click](javascript:alert(1))",
    "![x](https://evil.example/t.png)",
    "<https://evil.example>",
    "&lt;b&gt;entity&lt;/b&gt;",
    "line one\n<div onclick=alert(1)>two</div>",
    "col | split | here",
    "`code` and ``more``",
    "**bold** _em_ ~~strike~~",
    "\\<b>escaped</b>",
    "# heading\n- item\n1. item\n> quote",
    "\x1b[31mred\x1b[0m\u202eevil",
    "<!-- comment --><?php x ?><![CDATA[x]]>",
]

#: what the reports' own Markdown makes; anything else came from a value
ALLOWED_TAGS = {
    "h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre",
    "strong", "ul", "li", "br",
}  # fmt: skip
ALLOWED_ATTRS = {("class", "language-json"), ("class", "language-sh")}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[tuple[str, str | None]] = set()
        self.other: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(attrs)

    def handle_comment(self, data: str) -> None:
        self.other.append("comment")

    def handle_pi(self, data: str) -> None:
        self.other.append("pi")

    def unknown_decl(self, data: str) -> None:
        self.other.append("decl")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def render(markdown: str) -> _Tags:
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    parsed = _Tags()
    parsed.feed(html)
    parsed.close()
    return parsed


def assert_inert(markdown: str) -> None:
    parsed = render(markdown)
    assert parsed.tags <= ALLOWED_TAGS, parsed.tags - ALLOWED_TAGS
    assert parsed.attrs <= ALLOWED_ATTRS, parsed.attrs - ALLOWED_ATTRS
    assert parsed.other == []


@pytest.fixture
def vault(tmp_path: Path, keyfile: Path) -> Vault:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    v.declare_kind("profile", fields=["name", "note"], purposes=["service"])
    return v


def test_hostile_values_leave_no_tag_or_attribute_in_the_rendered_subject_report(
    vault: Vault,
) -> None:
    with vault:
        s = vault.admin()
        customer = s.add_customer(ref="<b onmouseover=alert(1)>ref</b>")
        for value in HOSTILE:
            s.put(customer, "profile", {"name": value, "note": value}, purpose="service")
        page = render_markdown(s.customer_report(customer))
    assert_inert(page)
    text = "".join(render(page).text)
    # The values are still there, as text: escaped, not dropped.
    assert "<img src=x onerror=alert(1)>" in text
    assert "[click](javascript:alert(1))" in text
    assert "\x1b" not in page and "\u202e" not in page  # controls are shown, not sent


def test_the_audit_report_renders_inert(vault: Vault) -> None:
    with vault:
        s = vault.admin()
        s.add_customer(ref="<script>x</script>")
        page = render_markdown(s.audit_report())
    assert_inert(page)


def test_a_certificate_reason_cannot_put_markup_into_its_page() -> None:
    document = {
        "vault": "vlt_`<b>`",
        "decommissioned_at": "2026-01-01T00:00:00Z<script>",
        "reason": "<img src=x onerror=alert(1)> [x](javascript:y)",
        "counts": {"customers_shredded": "<i>1</i>"},
        "log": {"head": "``<b>``"},
        "destroyed_keys": {"kek_epochs": [{"epoch": "<u>", "fingerprint": "`<u>`"}]},
        "backups_outstanding": [{"id": "<s>", "created": "<s>", "seq": 1}],
        "scope": "<iframe src=//evil></iframe>",
    }
    assert_inert(render_certificate_markdown(document))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_as_a_cell_or_a_paragraph_renders_as_that_text(value: str) -> None:
    for page in (f"| a |\n|---|\n| {md_text(value)} |\n", f"x {md_text(value)} y\n"):
        assert_inert(page)
    printable = "".join(ch for ch in value if ch.isprintable() or ch == " ")
    if printable == value and "\n" not in value:
        rendered = "".join(render(f"x {md_text(value)} y\n").text).strip()
        assert rendered == f"x {value} y".strip() or " ".join(rendered.split()) == " ".join(
            f"x {value} y".split()
        )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_in_a_code_span_stays_one_code_span(value: str) -> None:
    parsed = render(f"x {md_code(value)} y\n")
    assert parsed.tags <= {"p", "code"} and parsed.attrs == set()
