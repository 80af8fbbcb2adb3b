"""An independent gRPC client (Python grpcio, not our code): calls chkpt.v1.Chkpt/Status and
List over the daemon's Unix socket, learning the messages through server reflection; given a
snapshot, also Diff, ListTree and a dry-run Restore against it, checking that every bytes path
comes with its display string (`path_text`, `name_text`, `changed_paths_text`) and that the
string is the path.

Usage: grpc_client.py SOCKET WORKSPACE [SNAPSHOT]  -> prints one JSON document.
"""
import base64
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    socket, workspace = sys.argv[1], sys.argv[2]
    # Non-Rust clients on a Unix socket must set the :authority themselves.
    channel = grpc.insecure_channel(
        f"unix://{socket}", options=[("grpc.default_authority", "localhost")]
    )
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("chkpt.v1.Chkpt")

    def call(method: str, stream: bool = False, **fields):
        m = service.FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        kind = channel.unary_stream if stream else channel.unary_unary
        stub = kind(
            f"/chkpt.v1.Chkpt/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        answer = stub(req_cls(**fields), timeout=10)
        if stream:
            return [json_format.MessageToDict(a) for a in answer]
        return json_format.MessageToDict(answer)

    status = call("Status")
    listing = call("List", workspace=workspace, limit=10)
    out = {"status": status, "list": listing}
    if len(sys.argv) > 3:
        out["checked"] = check_texts(call, workspace, sys.argv[3], status)
    print(json.dumps(out))


def same(raw_b64: str, text: str, what: str) -> str:
    """The display string must be there and be the bytes path, decoded."""
    path = base64.b64decode(raw_b64).decode("utf-8")
    assert text == path, f"{what}: text {text!r} is not the path {path!r}"
    return path


def check_texts(call, workspace: str, snapshot: str, status) -> dict:
    """Every bytes path of Diff, ListTree, Restore and the excluded folders, beside its text."""
    checked = {"diff": [], "tree": [], "restore": [], "excluded": []}
    diff = call("Diff", workspace=workspace, **{"from": snapshot})
    for e in diff["entries"]:
        checked["diff"].append(same(e["path"], e.get("pathText"), "DiffEntry.path_text"))
    tree = call("ListTree", workspace=workspace, snapshot=snapshot)
    for e in tree["entries"]:
        checked["tree"].append(same(e["name"], e.get("nameText"), "TreeEntry.name_text"))
    events = call("Restore", stream=True, workspace=workspace, snapshot=snapshot, dry_run=True)
    summary = events[-1]["summary"]
    paths, texts = summary["changedPaths"], summary.get("changedPathsText", [])
    assert len(paths) == len(texts), f"changed_paths_text: {texts} beside {paths}"
    for raw, text in zip(paths, texts):
        checked["restore"].append(same(raw, text, "RestoreSummary.changed_paths_text"))
    for w in status["workspaces"]:
        for x in w["workspace"].get("excluded", []):
            checked["excluded"].append(same(x["path"], x.get("pathText"), "ExcludedDir.path_text"))
    return checked


if __name__ == "__main__":
    main()
