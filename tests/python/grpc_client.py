"""An independent gRPC client (Python grpcio, not our code): calls chkpt.v1.Chkpt/Status and
List over the daemon's Unix socket, learning the messages through server reflection.

Usage: grpc_client.py SOCKET WORKSPACE  -> prints one JSON document.
"""
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

    def call(method: str, **fields):
        m = service.FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        stub = channel.unary_unary(
            f"/chkpt.v1.Chkpt/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return json_format.MessageToDict(stub(req_cls(**fields), timeout=10))

    status = call("Status")
    listing = call("List", workspace=workspace, limit=10)
    print(json.dumps({"status": status, "list": listing}))


if __name__ == "__main__":
    main()
