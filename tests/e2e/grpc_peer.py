"""gRPC peers for tests/e2e_netns.rs, with grpcio and no generated code: methods take and
return raw protobuf bytes.

  grpc_peer.py server ADDR   serves e2e.Items (Get, List, Upload, Missing); prints "listening"
  grpc_peer.py client ADDR   makes one call of each kind and prints, as JSON, the calls made:
                             [{"path", "request": [hex messages], "response": [hex messages],
                               "status", "gzip"}]
"""
import json
import sys
from concurrent import futures

import grpc

SERVICE = "e2e.Items"


def get(request, context):
    # field 1 (bytes): "item:" + the request
    body = b"item:" + request
    return b"\x0a" + bytes([len(body)]) + body


def list_items(request, context):
    for i in range(3):
        yield bytes([0x08, i + 1, 0x12, 1, ord("a") + i])


def upload(requests, context):
    total = sum(len(r) for r in requests)
    return bytes([0x08, total])


def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item")


def serve(addr):
    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Get": grpc.unary_unary_rpc_method_handler(get),
        "List": grpc.unary_stream_rpc_method_handler(list_items),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handlers,))
    server.add_insecure_port(addr)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def client(addr):
    calls = []
    with grpc.insecure_channel(addr) as channel:
        def record(path, request, response, status, gzip=False):
            calls.append({"path": path, "request": [m.hex() for m in request],
                          "response": [m.hex() for m in response], "status": status,
                          "gzip": gzip})

        path = f"/{SERVICE}/Get"
        req = b"\x0a\x03abc"
        record(path, [req], [channel.unary_unary(path)(req)], 0)
        req = b"\x0a\x40" + b"compressible " * 4 + b"abcdefghijkl"
        resp = channel.unary_unary(path)(req, compression=grpc.Compression.Gzip)
        record(path, [req], [resp], 0, gzip=True)
        path = f"/{SERVICE}/List"
        req = b"\x08\x03"
        record(path, [req], list(channel.unary_stream(path)(req)), 0)
        path = f"/{SERVICE}/Upload"
        reqs = [b"\x08\x01", b"\x08\x02\x10\x03"]
        record(path, reqs, [channel.stream_unary(path)(iter(reqs))], 0)
        path = f"/{SERVICE}/Missing"
        try:
            channel.unary_unary(path)(b"\x08\x09")
            raise SystemExit("Missing did not fail")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
            record(path, [b"\x08\x09"], [], 5)
    print(json.dumps(calls))


if __name__ == "__main__":
    {"server": serve, "client": client}[sys.argv[1]](sys.argv[2])
