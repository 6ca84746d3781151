#!/usr/bin/env python3
"""Times GetCall on calls that carry a ticket, while bench/workorder.sh's calls run: attach a
ticket to a call in progress (a command on 12345's Link stream), then GetCall it until it ends
or SAMPLES_PER_CALL answers are timed; prints the count, p50, p99 and max in milliseconds.

    PYTHONPATH=bench/out/stubs python3 bench/workorder_unary.py TARGET TOKEN SAMPLES
"""

import queue
import sys
import time
import uuid

import grpc

from hotline.workorder.v1 import workorder_pb2 as pb
from hotline.workorder.v1 import workorder_pb2_grpc as rpc

SAMPLES_PER_CALL = 50


def ticket():
    return pb.Ticket(
        number="GD-BENCH",
        classification_code="110203",
        urgency=pb.URGENCY_B_FIVE_WORKING_DAYS,
        summary="street light out on the corner of Renmin Road and Huaihai Road " * 4,
        address=pb.Address(text="Renmin Road", district="Xuhui"),
        fields={f"note{i}": "x" * 40 for i in range(10)},
    )


def main():
    target, token, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metadata = [("authorization", f"Bearer {token}")]
    channel = grpc.insecure_channel(target)
    stub = rpc.WorkOrderServiceStub(channel)
    # The stream from its newest event on: only the commands' results matter here.
    latest = 0
    for response in stub.Link(iter([pb.LinkRequest(hello=pb.Hello(platform="12345", token=token))])):
        latest = response.welcome.latest
        break
    requests = queue.Queue()
    requests.put(pb.LinkRequest(hello=pb.Hello(platform="12345", token=token, resume_after=latest)))
    responses = stub.Link(iter(requests.get, None))
    times = []
    deadline = time.monotonic() + 120
    while len(times) < wanted and time.monotonic() < deadline:
        page = stub.ListActiveCalls(pb.ListActiveCallsRequest(page_size=1), metadata=metadata)
        if not page.calls:
            continue
        call_id = page.calls[0].call_id
        command_id = str(uuid.uuid4())
        requests.put(
            pb.LinkRequest(
                command=pb.Command(
                    command_id=command_id,
                    attach_ticket=pb.AttachTicket(call_id=call_id, ticket=ticket()),
                )
            )
        )
        for response in responses:
            if response.WhichOneof("kind") == "result" and response.result.command_id == command_id:
                ok = response.result.ok
                break
        if not ok:
            continue
        for _ in range(SAMPLES_PER_CALL):
            start = time.perf_counter_ns()
            try:
                answer = stub.GetCall(pb.GetCallRequest(call_id=call_id), metadata=metadata)
            except grpc.RpcError:
                break
            elapsed = time.perf_counter_ns() - start
            if answer.call.ticket.number != "GD-BENCH":
                break
            times.append(elapsed / 1e6)
    requests.put(None)
    times.sort()
    if not times:
        print("unary 0 samples")
        return 1
    pick = lambda q: times[min(len(times) - 1, int(len(times) * q))]
    print(f"unary {len(times)} samples p50 {pick(0.5):.3f} ms p99 {pick(0.99):.3f} ms max {times[-1]:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
