"""The AsyncAPI document as one HTML page, rendered here: no script, no fetch, works offline.

Sections follow the document: servers, operations, channels, messages
(headers and payload schema), named schemas and security schemes. Every
reference is a link to the section it names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

__all__ = ["page"]

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
color:#1b1f24}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
h3{margin:1.6rem 0 .4rem;font-family:ui-monospace,monospace;font-size:1rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:13px}
code{font-family:ui-monospace,monospace}.tag{display:inline-block;padding:0 .4rem;
border-radius:.3rem;font-size:.8rem;color:#fff;background:#57606a}.receive{background:#0969da}
.send{background:#1a7f37}nav a{margin-right:1rem}.muted{color:#57606a}
"""


def page(document: Mapping[str, Any]) -> str:
    """``document`` (an AsyncAPI 3.0 document) as a page of HTML."""
    info = document.get("info", {})
    components = document.get("components", {})
    title = f"{info.get('title', '')} {info.get('version', '')}".strip()
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f" — AsyncAPI</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1><p class='muted'>AsyncAPI {escape(document['asyncapi'])}"
        " — <a href='asyncapi.json'>JSON</a> · <a href='asyncapi.yaml'>YAML</a></p>",
        _text(info.get("description")),
        "<nav><a href='#servers'>Servers</a><a href='#operations'>Operations</a>"
        "<a href='#channels'>Channels</a><a href='#messages'>Messages</a>"
        "<a href='#schemas'>Schemas</a></nav>",
        _servers(document.get("servers", {})),
        _operations(document),
        _channels(document),
        _messages(components.get("messages", {})),
        _section("schemas", "Schemas", _named(components.get("schemas", {}), "schema")),
        _section(
            "security", "Security schemes", _named(components.get("securitySchemes", {}), "scheme")
        ),
        "</body></html>",
    ]
    return "".join(parts)


def _servers(servers: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(s.get('protocol', ''))}</td>"
        f"<td><code>{escape(s.get('host', ''))}</code></td>"
        f"<td><code>{escape(s.get('pathname', ''))}</code></td>"
        f"<td>{escape(s.get('description', ''))}"
        + (f" — security {_refs(s['security'])}" if s.get("security") else "")
        + "</td></tr>"
        for name, s in servers.items()
    )
    table = (
        "<table><tr><th>server</th><th>protocol</th><th>host</th><th>path</th><th></th></tr>"
        f"{rows}</table>"
    )
    return _section("servers", "Servers", table)


def _operations(document: Mapping[str, Any]) -> str:
    blocks = []
    for name, operation in document.get("operations", {}).items():
        action = escape(operation["action"])
        channel = operation["channel"]["$ref"]
        address = _at(document, channel).get("address", "")
        blocks.append(
            f"<h3 id='{_anchor('operation', name)}'><span class='tag {action}'>{action}</span> "
            f"{escape(name)}</h3><p>{escape(operation.get('summary', ''))} — channel "
            f"<a href='{_link(channel)}'><code>{escape(address)}</code></a>, messages "
            f"{_refs(operation.get('messages', []), document)}</p>"
            + _text(operation.get("description"))
            + _facts(
                {"bindings": operation.get("bindings"), **operation.get("x-millstream", {})},
                document,
            )
        )
    return _section("operations", "Operations", "".join(blocks))


def _channels(document: Mapping[str, Any]) -> str:
    channels = document.get("channels", {})
    blocks = [
        f"<h3 id='{_anchor('channel', name)}'>{escape(channel.get('address') or name)}</h3>"
        + _text(channel.get("description"))
        + f"<p>messages {_refs(channel.get('messages', {}).values())}</p>"
        + _facts(
            {"parameters": channel.get("parameters"), "bindings": channel.get("bindings")},
            document,
        )
        for name, channel in channels.items()
    ]
    return _section("channels", "Channels", "".join(blocks))


def _messages(messages: Mapping[str, Any]) -> str:
    blocks = []
    for name, message in messages.items():
        kind = message.get("contentType")
        blocks.append(
            f"<h3 id='{_anchor('message', name)}'>{escape(name)}</h3>"
            f"<p>{escape(message.get('title') or message.get('name', ''))}"
            + ("" if kind is None else f" — <code>{escape(kind)}</code>")
            + "</p>"
            + _json("headers", message.get("headers"))
            + _json("payload", message.get("payload", "no schema"))
        )
    return _section("messages", "Messages", "".join(blocks))


def _named(items: Mapping[str, Any], kind: str) -> str:
    return "".join(
        f"<h3 id='{_anchor(kind, name)}'>{escape(name)}</h3>{_json('', item)}"
        for name, item in items.items()
    )


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{title}</h2>{body or '<p>none</p>'}</section>"


def _text(text: str | None) -> str:
    return "" if not text else f"<p>{escape(text)}</p>"


def _facts(values: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    """``values`` as a table of names and values; references are links, ``None`` is left out."""
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{_value(value, document)}</td></tr>"
        for name, value in values.items()
        if value is not None
    )
    return f"<table>{rows}</table>" if rows else ""


def _value(value: Any, document: Mapping[str, Any]) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("$ref"), str):
        return _refs([value], document)
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return ", ".join(_value(each, document) for each in value)
    if isinstance(value, Mapping) and all(
        not isinstance(v, Mapping | list) for v in value.values()
    ):
        return ", ".join(f"{escape(str(k))} {_value(v, document)}" for k, v in value.items())
    if isinstance(value, str):
        return f"<code>{escape(value)}</code>"
    return f"<code>{escape(json.dumps(value, ensure_ascii=False))}</code>"


def _json(label: str, value: Any) -> str:
    """``value`` as indented JSON, each ``$ref`` in it a link."""
    if value is None:
        return ""
    shown = escape(json.dumps(value, indent=2, ensure_ascii=False))
    linked = re.sub(
        r"&quot;(#/[^&]*)&quot;",
        lambda found: f"&quot;<a href='{_link(found.group(1))}'>{found.group(1)}</a>&quot;",
        shown,
    )
    caption = f"<p class='muted'>{escape(label)}</p>" if label else ""
    return f"{caption}<pre>{linked}</pre>"


def _refs(refs: Iterable[Mapping[str, str]], document: Mapping[str, Any] | None = None) -> str:
    """Links to what ``refs`` point at: a channel's message through to its component, a
    channel shown by its address."""
    links = []
    for ref in refs:
        target = shown = ref["$ref"]
        if document is not None and "/messages/" in target:
            target = shown = _at(document, target).get("$ref", target)
        elif document is not None and target.startswith("#/channels/"):
            shown = _at(document, target).get("address", target)
        name = shown.rpartition("/")[2] if shown.startswith("#/") else shown
        links.append(f"<a href='{_link(target)}'><code>{escape(name)}</code></a>")
    return ", ".join(links)


def _link(ref: str) -> str:
    """The page anchor of a document reference (``#/components/messages/x`` -> ``#message-x``)."""
    parts = ref.lstrip("#/").split("/")
    kinds = {"channels": "channel", "operations": "operation", "messages": "message"}
    if parts[0] == "components" and len(parts) >= 3:
        kind = {"schemas": "schema", "securitySchemes": "scheme"}.get(parts[1], "message")
        return "#" + _anchor(kind, parts[2])
    return "#" + _anchor(kinds.get(parts[0], parts[0]), parts[1] if len(parts) > 1 else "")


def _anchor(kind: str, name: str) -> str:
    return escape(f"{kind}-{name}")


def _at(document: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    """What a local reference points at in ``document`` (empty when it points nowhere)."""
    found: Any = document
    for part in ref.lstrip("#/").split("/"):
        found = (
            found.get(part.replace("~1", "/").replace("~0", "~"), {})
            if isinstance(found, Mapping)
            else {}
        )
    return found if isinstance(found, Mapping) else {}
