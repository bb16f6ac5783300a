"""An independent real-time client for bench_turn.py: grpcio, with ``_pb2`` modules generated
from the upstream remotemedia.v1 protos (no nursery_pipes extensions).

Usage: python _turn_client.py GEN_DIR ADDRESS REQUESTS_JSON

REQUESTS_JSON: ``{"init": HEX, "chunks": [HEX, ...], "close": HEX, "pace_s": 0.02}`` —
serialized StreamRequests. The client sends ``init``, waits for StreamReady, then sends
chunk ``i`` at ``t0 + (i + 1) * pace_s`` (a microphone hands over 20 ms of audio once it
has been captured), then ``close``. It prints one JSON object: every response after
StreamReady as ``{"t": seconds since t0, "which": oneof member or null, ...}``, where a
result lists its outputs ``{"node", "type", "text", "metadata"}``.

It knows nothing of the server's code: only the wire. It imports no nursery_pipes module.
"""

import json
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])

import grpc
from remotemedia.v1 import streaming_pb2, streaming_pb2_grpc

ADDRESS = sys.argv[2]
with open(sys.argv[3], encoding="utf-8") as file:
    PLAN = json.load(file)


def own(hex_text):
    """A request as this client's own message, which must use only fields this client knows."""
    message = streaming_pb2.StreamRequest.FromString(bytes.fromhex(hex_text))
    known = streaming_pb2.StreamRequest()
    known.CopyFrom(message)
    known.DiscardUnknownFields()
    assert known.ByteSize() == message.ByteSize(), "a request uses fields upstream lacks"
    return message


def main():
    init, chunks, close = own(PLAN["init"]), [own(c) for c in PLAN["chunks"]], own(PLAN["close"])
    pace = float(PLAN["pace_s"])
    ready = threading.Event()
    done = threading.Event()
    clock = {"t0": 0.0}
    late = []

    def requests():
        yield init
        if not ready.wait(120):
            return
        t0 = clock["t0"] = time.perf_counter()
        for i, chunk in enumerate(chunks):
            due = t0 + (i + 1) * pace
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                late.append(-delay)
            yield chunk
        yield close
        done.wait(120)

    seen = []
    stub = streaming_pb2_grpc.StreamingPipelineServiceStub(grpc.insecure_channel(ADDRESS))
    status = "OK"
    try:
        for response in stub.StreamPipeline(requests(), timeout=600):
            now = time.perf_counter()
            which = response.WhichOneof("response")
            if which == "ready":
                ready.set()
                continue
            entry = {"t": now - clock["t0"] if ready.is_set() else None, "which": which}
            if which == "result":
                entry["outputs"] = [
                    {
                        "node": node,
                        "type": buffer.WhichOneof("data_type"),
                        "text": buffer.text.text_data.decode() if buffer.HasField("text") else None,
                        "metadata": dict(buffer.metadata),
                    }
                    for node, buffer in response.result.data_outputs.items()
                ]
            elif which == "error":
                entry["message"] = response.error.message
            seen.append(entry)
    except grpc.RpcError as exc:
        status = f"{exc.code().name}: {exc.details()}"
    finally:
        done.set()
    late_ms = max(late) * 1000 if late else 0.0
    print(json.dumps({"status": status, "responses": seen, "latest_send_ms": late_ms}), flush=True)


main()
