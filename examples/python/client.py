#!/usr/bin/env python3
"""A platform's client of hotline-gateway's work-order link, written from
proto/hotline/workorder/v1/workorder.proto and the README alone, with stock grpcio.

It follows the platform's Link stream and prints each event on a line, acknowledges each
event once it has handled it, and, when asked, attaches a ticket to the first answered call
and transfers that call (一键携号转接) to another number. A command whose result was lost
(the stream broke) is sent again after reconnecting, with the same command_id: the gateway
answers it as the first one and does not carry it out twice.

Stubs, generated with the stock tools:

    python3 -m grpc_tools.protoc -I proto --python_out=stubs --grpc_python_out=stubs \\
        proto/hotline/workorder/v1/workorder.proto
    PYTHONPATH=stubs python3 examples/python/client.py --platform 12345 --token ... \\
        --transfer-to 110 --exit-after TRANSFER_ANSWERED
"""

import argparse
import queue
import sys
import time
import uuid

import grpc
from google.protobuf import timestamp_pb2

from hotline.workorder.v1 import workorder_pb2 as pb
from hotline.workorder.v1 import workorder_pb2_grpc as rpc


def event_line(event):
    """One readable line: sequence, type, call, numbers, and what the event adds."""
    kind = pb.EventType.Name(event.type).removeprefix("EVENT_TYPE_")
    line = (
        f"event {event.sequence} {kind} call={event.call_id} "
        f"citizen={event.citizen_number} called={event.called_number} "
        f"b={event.called_leg.peer}"
    )
    if event.linkage_id:
        line += f" linkage={event.linkage_id} target={event.target.peer}"
    if event.HasField("ticket"):
        line += f" ticket={event.ticket.number} v{event.ticket.version}"
    if event.ended_by:
        line += f" ended_by={pb.EndedBy.Name(event.ended_by).removeprefix('ENDED_BY_')}"
    return line


def work_order(number):
    """A small 12345 work order."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return pb.Ticket(
        number=number,
        classification_code="110203",
        request_type=pb.REQUEST_TYPE_ASSISTANCE,
        urgency=pb.URGENCY_D_URGENT,
        summary="smoke from the flat next door",
        address=pb.Address(text="3 Renmin Road", district="Xuhui"),
        history=[pb.StatusChange(status=pb.TICKET_STATUS_RECEIVED, time=now)],
    )


class Client:
    def __init__(self, args):
        self.args = args
        self.acknowledged = 0
        # command_id -> Command, until its result comes: sent again after a reconnect.
        self.unanswered = {}
        self.call_id = None
        self.done = False
        # A Welcome came on the current connection (the backoff starts again after one).
        self.connected = False

    def command(self, requests, **action):
        command_id = str(uuid.uuid4())
        command = pb.Command(command_id=command_id, **action)
        self.unanswered[command_id] = command
        requests.put(pb.LinkRequest(command=command))

    def handle(self, event, requests):
        """What this platform does with an event."""
        print(event_line(event), flush=True)
        kind = pb.EventType.Name(event.type)
        if kind == "EVENT_TYPE_CALL_ANSWERED" and self.call_id is None and self.args.transfer_to:
            self.call_id = event.call_id
            if self.args.ticket_number:
                self.command(
                    requests,
                    attach_ticket=pb.AttachTicket(
                        call_id=event.call_id, ticket=work_order(self.args.ticket_number)
                    ),
                )
            self.command(
                requests,
                transfer=pb.Transfer(call_id=event.call_id, target=self.args.transfer_to),
            )
        if kind == self.args.exit_after and (self.call_id is None or event.call_id == self.call_id):
            self.done = True

    def follow(self, channel, seconds):
        """One stream: Hello, then events, results and notices until it ends (or `seconds`
        pass: a real client keeps its stream open for good)."""
        requests = queue.Queue()
        requests.put(
            pb.LinkRequest(
                # No resume_after: after the last event this platform acknowledged.
                hello=pb.Hello(platform=self.args.platform, token=self.args.token)
            )
        )
        for command in self.unanswered.values():
            requests.put(pb.LinkRequest(command=command))
        stub = rpc.WorkOrderServiceStub(channel)
        responses = stub.Link(iter(requests.get, None), timeout=seconds)
        closing = False
        try:
            for response in responses:
                which = response.WhichOneof("kind")
                if which == "welcome":
                    self.connected = True
                    limits = response.welcome.limits
                    print(
                        f"welcome latest={response.welcome.latest} "
                        f"acknowledged={response.welcome.acknowledged} "
                        f"max_message_bytes={limits.max_message_bytes}",
                        flush=True,
                    )
                elif which == "event":
                    if closing:
                        continue
                    self.handle(response.event, requests)
                    # Handled: it need not come again.
                    requests.put(pb.LinkRequest(ack=pb.Ack(sequence=response.event.sequence)))
                    self.acknowledged = response.event.sequence
                elif which == "result":
                    result = response.result
                    self.unanswered.pop(result.command_id, None)
                    error = pb.ErrorCode.Name(result.error).removeprefix("ERROR_CODE_")
                    print(
                        f"result ok={result.ok} error={error} replayed={result.replayed} "
                        f"message={result.message!r}",
                        flush=True,
                    )
                elif which == "notice":
                    print(f"notice {response.notice.message}", flush=True)
                if self.done and not closing:
                    # Close our side: the gateway handles what we sent (the last Acks) and
                    # then ends the stream, OK.
                    closing = True
                    requests.put(None)
            if closing:
                print(f"done acknowledged={self.acknowledged}", flush=True)
                return True
        finally:
            requests.put(None)
            responses.cancel()
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway's [api] grpc")
    parser.add_argument("--platform", required=True, help="the [[platform]] name")
    parser.add_argument("--token", required=True, help="the [[platform]] token")
    parser.add_argument("--transfer-to", help="transfer the first answered call to this number")
    parser.add_argument("--ticket-number", help="attach a ticket with this number first")
    parser.add_argument("--exit-after", default="", help="stop after this event type")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after seconds")
    args = parser.parse_args()
    args.exit_after = "EVENT_TYPE_" + args.exit_after.removeprefix("EVENT_TYPE_")
    client = Client(args)
    deadline = time.monotonic() + args.timeout
    backoff = 0.2
    while time.monotonic() < deadline:
        with grpc.insecure_channel(args.target) as channel:
            try:
                if client.follow(channel, max(deadline - time.monotonic(), 1.0)):
                    return 0
                print("stream ended", flush=True)
            except grpc.RpcError as error:
                # UNAVAILABLE: the gateway is stopping or unreachable; anything else is a
                # refusal that names its reason.
                print(f"status {error.code().name}: {error.details()}", flush=True)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return 1
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    return 2
        if client.connected:
            backoff, client.connected = 0.2, False
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
    return 1


if __name__ == "__main__":
    sys.exit(main())
