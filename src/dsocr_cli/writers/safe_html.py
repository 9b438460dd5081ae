"""Layout blocks -> HTML that can only ever be data. Model output is escaped, except the table
markup the model writes on purpose, which is rebuilt from an allowlist (tags and numeric spans
only), so a page whose text is `<script>` shows as text. Pure: strings in, strings out."""

from __future__ import annotations

import re
from html import escape
from html.parser import HTMLParser
from urllib.parse import quote

TABLE_TAGS = {"table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "b", "i", "strong", "em", "sub", "sup"}
VOID_TAGS = {"br"}
SPAN_ATTRS = {"colspan", "rowspan"}
HEADINGS = {"title": "h3", "sub_title": "h4"}
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_HEADING = re.compile(r"^#{1,6}\s+")


class _TableRebuilder(HTMLParser):
    """Keeps allowed tags (balanced, attributes dropped but for numeric spans); any other tag
    shows as the text the model wrote."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        """An allowed tag is kept with its numeric spans alone and left open to be balanced; any
        other shows as the text the model wrote."""
        if tag in VOID_TAGS:
            self.out.append(f"<{tag}>")
        elif tag in TABLE_TAGS:
            spans = "".join(
                f' {name}="{value}"'
                for name, value in attrs
                if name in SPAN_ATTRS and value and value.isdigit() and 0 < int(value) <= 1000
            )
            self.out.append(f"<{tag}{spans}>")
            self.open.append(tag)
        else:
            self.out.append(escape(self.get_starttag_text() or f"<{tag}>", quote=False))

    def handle_startendtag(self, tag, attrs):
        """`<br/>` stays a line break; any other self-closed tag shows as text."""
        if tag in VOID_TAGS:
            self.out.append(f"<{tag}>")
        else:
            self.out.append(escape(self.get_starttag_text() or f"<{tag}/>", quote=False))

    def handle_endtag(self, tag):
        """Closes every tag opened since the matching one, so the markup stays balanced; an end tag
        with no open match is dropped, a foreign one shows as text."""
        if tag not in TABLE_TAGS:
            self.out.append(escape(f"</{tag}>", quote=False))
            return
        if tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data):
        """Text is always escaped."""
        self.out.append(escape(data))

    def result(self) -> str:
        """The rebuilt markup, with every tag the model left open closed."""
        self.close()
        return "".join(self.out) + "".join(f"</{tag}>" for tag in reversed(self.open))


def table_html(text: str) -> str:
    """The model's table markup, rebuilt from allowed tags; anything else in it becomes text."""
    parser = _TableRebuilder()
    parser.feed(text)
    return parser.result()


def inline(text: str) -> str:
    """Escaped text with markdown bold and italic, line breaks kept."""
    html = escape(text, quote=False)
    html = _BOLD.sub(r"<strong>\1</strong>", html)
    html = _ITALIC.sub(r"<em>\1</em>", html)
    return html.replace("\n", "<br>")


def paragraphs(text: str) -> str:
    """Markdown paragraphs, headings and bullet lists, everything escaped."""
    parts = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = chunk.split("\n")
        if all(_LIST_ITEM.match(line) for line in lines):
            items = "".join(f"<li>{inline(_LIST_ITEM.sub('', line, count=1))}</li>" for line in lines)
            parts.append(f"<ul>{items}</ul>")
        elif _HEADING.match(chunk) and len(lines) == 1:
            parts.append(f"<h4>{inline(_HEADING.sub('', chunk))}</h4>")
        elif chunk:
            parts.append(f"<p>{inline(chunk)}</p>")
    return "".join(parts)


def block_body(block: dict) -> str:
    """One block's content: a heading, a table, LaTeX source, figure crops or paragraphs."""
    label, text = block.get("label", "text"), block.get("text", "")
    figures = "".join(
        f'<img class="figure" loading="lazy" src="{escape(url(f))}" alt="figure">' for f in block.get("figures", [])
    )
    if label in HEADINGS and "\n" not in text.strip():
        tag = HEADINGS[label]
        return f"<{tag}>{inline(_HEADING.sub('', text.strip()))}</{tag}>"
    if "<table" in text.lower():
        return figures + table_html(text)
    if label == "equation" or text.strip().startswith(("\\[", "$$")):
        return figures + f'<pre class="latex">{escape(text, quote=False)}</pre>'
    return figures + paragraphs(text)


def url(relative: str) -> str:
    """A relative path as a link: each part percent-encoded, so names with '#', '?' or quotes stay names."""
    return "/".join(quote(part, safe="") for part in relative.split("/"))
