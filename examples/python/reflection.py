#!/usr/bin/env python3
"""Finds hotline-gateway's work-order service by gRPC server reflection, with no proto file:
what grpcurl, Postman or Kreya do first. grpcio-reflection's client speaks the v1alpha
reflection protocol; the gateway answers v1alpha and v1.

    python3 examples/python/reflection.py --target 127.0.0.1:50051
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway's [api] grpc")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        for service in database.get_services():
            print(f"service {service}")
        # Resolving the service fetches its file and the files it imports (the well-known
        # Timestamp and Duration) from the gateway.
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("hotline.workorder.v1.WorkOrderService")
        for method in service.methods:
            print(f"method {method.name} {method.input_type.full_name} {method.output_type.full_name}")
        event = pool.FindMessageTypeByName("hotline.workorder.v1.Event")
        print(f"field Event.time {event.fields_by_name['time'].message_type.full_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
