#!/usr/bin/env python3
"""RabbitMQ tutorial six's Python RPC client (pika), as the tutorial gives it.

Kept here to check that our Deno scripts interoperate with the official
programs, and to benchmark against them. Changes from the tutorial, all for
tests: the broker URL comes from AMQP_URL, the queue name from RPC_QUEUE, n
from the command line (default 30), and the demo runs under __main__ so the
benchmark can import the class.

    /usr/bin/python3 interop/rpc_client.py 30    # needs python3-pika
"""
import os
import sys
import uuid

import pika


class FibonacciRpcClient(object):

    def __init__(self):
        self.connection = pika.BlockingConnection(
            pika.URLParameters(os.environ.get("AMQP_URL", "amqp://localhost")))

        self.channel = self.connection.channel()

        result = self.channel.queue_declare(queue='', exclusive=True)
        self.callback_queue = result.method.queue

        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True)

        self.response = None
        self.corr_id = None

    def on_response(self, ch, method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body

    def call(self, n):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange='',
            routing_key=os.environ.get("RPC_QUEUE", "rpc_queue"),
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=self.corr_id,
            ),
            body=str(n))
        while self.response is None:
            self.connection.process_data_events(time_limit=None)
        return int(self.response)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    fibonacci_rpc = FibonacciRpcClient()

    print(f" [x] Requesting fib({n})")
    response = fibonacci_rpc.call(n)
    print(f" [.] Got {response}")
