"""A real MCP client (the official Python SDK, `mcp` on PyPI) driving `chkptctl mcp` over stdio.

Usage: mcp_client.py CHKPTCTL SOCKET WORKSPACE SERVER_CWD

The server runs in SERVER_CWD, which is not the workspace: the workspace reaches it only as
this client's root. Every step checks the files on disk; any failure raises, and the process
exits non-zero. The last line on stdout is a JSON summary for the Rust test.
"""

import asyncio
import json
import pathlib
import re
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

try:  # SDK 2.x
    from mcp.shared.exceptions import MCPError as McpError
except ImportError:  # SDK 1.x
    from mcp.shared.exceptions import McpError

CHKPTCTL, SOCKET, WS, SERVER_CWD = sys.argv[1:5]
ws = pathlib.Path(WS)

TOOLS = [
    "checkpoint",
    "diff",
    "file_history",
    "list_checkpoints",
    "read_file_at",
    "restore",
    "undo_restore",
]


def on_disk():
    """Every file under the workspace, relative path -> bytes."""
    return {
        str(p.relative_to(ws)): p.read_bytes()
        for p in sorted(ws.rglob("*"))
        if p.is_file()
    }


def f(obj, name):
    """A field by its snake_case name (SDK 2.x) or its camelCase one (SDK 1.x)."""
    if hasattr(obj, name):
        return getattr(obj, name)
    return getattr(obj, re.sub(r"_(\w)", lambda m: m.group(1).upper(), name))


def data(result):
    return f(result, "structured_content")


def text_of(result):
    return "".join(c.text for c in result.content if c.type == "text")


async def list_roots(context):
    return types.ListRootsResult(roots=[types.Root(uri=ws.as_uri(), name="workspace")])


async def call(session, name, args, expect_error=False):
    result = await session.call_tool(name, args)
    if bool(f(result, "is_error")) != expect_error:
        raise AssertionError(f"{name}({args}): isError={f(result, 'is_error')}: {text_of(result)}")
    return result


async def main():
    params = StdioServerParameters(
        command=CHKPTCTL, args=["--socket", SOCKET, "mcp"], cwd=SERVER_CWD
    )
    summary = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, list_roots_callback=list_roots) as s:
            init = await s.initialize()
            summary["server"] = f(init, "server_info").name

            tools = (await s.list_tools()).tools
            names = sorted(t.name for t in tools)
            assert names == TOOLS, names
            schema = {t.name: f(t, "input_schema") for t in tools}
            assert sorted(schema["read_file_at"]["required"]) == ["path", "snapshot"], schema
            assert "dry_run" in schema["restore"]["properties"], schema["restore"]
            assert schema["restore"]["required"] == ["snapshot"], schema["restore"]

            start = on_disk()
            assert start == {"a.txt": b"one\n"}, start

            # Nothing changed since the baseline: the checkpoint is the baseline, unchanged.
            r = await call(s, "checkpoint", {"message": "before the edit", "tags": {"task": "t1"}})
            c1 = data(r)["id"]
            assert data(r)["unchanged"] is True, data(r)
            assert on_disk() == start

            # The agent edits through the shell, not through a tool chkpt sees.
            (ws / "a.txt").write_bytes(b"two\n")
            (ws / "b.txt").write_bytes(b"new file\n")
            edited = on_disk()

            r = await call(s, "diff", {})
            patch = text_of(r)
            assert "-one" in patch and "+two" in patch and "b.txt" in patch, patch
            assert on_disk() == edited

            r = await call(s, "checkpoint", {"message": "after the edit"})
            c2 = data(r)["id"]
            assert data(r)["created"] is True and c2 != c1, data(r)
            changed = {e["path"]: e["change"] for e in data(r)["changes"]}
            assert changed == {"a.txt": "modified", "b.txt": "added"}, changed

            r = await call(s, "read_file_at", {"snapshot": c1, "path": "a.txt"})
            assert data(r)["content"] == "one\n", data(r)
            # `..` inside the workspace is resolved, as on the command line.
            r = await call(s, "read_file_at", {"snapshot": c1, "path": "nowhere/../a.txt"})
            assert data(r)["content"] == "one\n", data(r)
            (ws / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
            r = await call(s, "checkpoint", {"message": "lines"})
            c3 = data(r)["id"]
            r = await call(
                s, "read_file_at", {"snapshot": c3, "path": "lines.txt", "start_line": 3, "end_line": 4}
            )
            assert data(r)["content"] == "line 3\nline 4\n", data(r)

            r = await call(s, "file_history", {"path": "a.txt"})
            history = [e["snapshot"]["id"] for e in data(r)["entries"]]
            assert history[0] == c2, history

            r = await call(s, "list_checkpoints", {"limit": 5})
            listed = [x["id"] for x in data(r)["checkpoints"]]
            assert listed[0] == c3 and c2 in listed, listed
            r = await call(s, "list_checkpoints", {"tag": "task=t1"})
            tagged = [x["id"] for x in data(r)["checkpoints"]]
            assert tagged == [c1], tagged

            before_restore = on_disk()
            r = await call(s, "restore", {"snapshot": c1})
            assert data(r)["dry_run"] is True, data(r)
            assert sorted(data(r)["changed_paths"]) == ["a.txt", "b.txt", "lines.txt"]
            # The daemon's total and each path's change, as `chkptctl restore` prints them.
            assert data(r)["changed_total"] == 3, data(r)
            said = text_of(r)
            assert "would change 3 paths" in said, said
            for line in ["M a.txt", "D b.txt", "D lines.txt"]:
                assert line in said.splitlines(), (line, said)
            assert on_disk() == before_restore, "a dry run wrote files"

            r = await call(s, "restore", {"snapshot": c1, "dry_run": False})
            pre = data(r)["pre_restore_snapshot"]
            assert pre and pre not in (c1, c2, c3), data(r)
            assert pre in text_of(r)
            assert on_disk() == start, on_disk()

            r = await call(s, "undo_restore", {})
            assert on_disk() == before_restore, on_disk()
            summary["pre_restore"] = pre

            # A daemon error is a tool error carrying the daemon's message.
            r = await call(s, "restore", {"snapshot": "fffffffffffffff", "dry_run": False},
                           expect_error=True)
            assert "fffffffffffffff" in text_of(r), text_of(r)
            assert on_disk() == before_restore
            r = await call(s, "read_file_at", {"snapshot": "latest", "path": "missing.txt"},
                           expect_error=True)
            assert "missing.txt" in text_of(r), text_of(r)

            # A bad argument is refused, and the server keeps serving.
            try:
                r = await s.call_tool("read_file_at", {"snapshot": "latest", "path": 7})
                assert f(r, "is_error"), "a number for a path was accepted"
            except McpError:
                pass
            await call(s, "list_checkpoints", {"limit": 1})

            # A file past the chunking threshold (3.6 MiB, stored as chunks): lines from its
            # middle, the count of all of them, and a last line without its newline.
            (ws / "huge.log").write_text(
                "".join(f"row {n:07}\n" for n in range(1, 300_001)) + "last, no newline"
            )
            r = await call(s, "checkpoint", {"message": "huge"})
            c4 = data(r)["id"]
            r = await call(s, "read_file_at",
                           {"snapshot": c4, "path": "huge.log", "start_line": 150000, "end_line": 150002})
            assert data(r)["content"] == "row 0150000\nrow 0150001\nrow 0150002\n", data(r)
            assert data(r)["total_lines"] == 300_001, data(r)
            r = await call(s, "read_file_at", {"snapshot": c4, "path": "huge.log", "start_line": 300_001})
            assert data(r)["content"] == "last, no newline", data(r)
            r = await call(s, "read_file_at", {"snapshot": c4, "path": "huge.log"})
            assert data(r)["cut"] is True and len(data(r)["content"]) <= 100_000, data(r)["end_line"]
            assert data(r)["content"].startswith("row 0000001\n"), data(r)["content"][:40]
            (ws / "huge.log").unlink()

            # Past the size limit the patch is cut, with a note on how to see the rest.
            for i in range(40):
                (ws / f"big{i:02}.txt").write_text(
                    "".join(f"{i} line {n} of a long new file\n" for n in range(200))
                )
            r = await call(s, "diff", {})
            patch = text_of(r)
            assert "[diff cut at" in patch and data(r)["cut"] is True, patch[-500:]
            assert len(patch) < 70_000, len(patch)
            r = await call(s, "diff", {"paths": ["big39.txt"]})
            assert "39 line 199 of a long new file" in text_of(r)

            summary["checkpoints"] = [c1, c2, c3]
    print(json.dumps(summary))


asyncio.run(main())
