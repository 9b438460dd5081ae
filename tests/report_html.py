"""Read the report's HTML back as a tree (html.parser), and lay out runs for the report tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

VOID = {"meta", "img", "br", "input", "link", "hr"}


@dataclass
class Node:
    tag: str
    attrs: dict
    children: list = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None, **attrs) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and all(child.attrs.get(k) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.all(tag, **attrs)
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(path: Path) -> Node:
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    return builder.root


def link_target(page: Path, href: str) -> tuple[Path, str]:
    """The file a relative link points at, and its fragment."""
    parts = urlsplit(href)
    assert not parts.scheme and not parts.netloc, href
    return (page.parent / unquote(parts.path)).resolve(), parts.fragment


def index_rows(tree: Node) -> list[dict]:
    """The index's rows, from the JSON its script renders, as dicts by column name."""
    data = json.loads(tree.all("script", id="index-data")[0].text())
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]


def record_run(folder: Path, key: str, raws: dict[int, str], finishes: dict[int, str] | None = None) -> Path:
    """Raw outputs (and finish reasons) as an earlier run would have left them, for --engine replay."""
    document = folder / key
    for number, raw in raws.items():
        path = document / "pages" / f"{number:04d}.raw.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw, encoding="utf-8")
    pages = [{"number": n, "finish": (finishes or {}).get(n, "eos"), "tokens": 40 + n} for n in raws]
    (document / "document.json").write_text(json.dumps({"pages": pages}), encoding="utf-8")
    return folder
