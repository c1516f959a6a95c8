#!/usr/bin/env python3
"""RabbitMQ tutorial six's Python RPC server (pika), as the tutorial gives it.

Kept here to check that our Deno scripts interoperate with the official
programs, and to benchmark against them. Two changes from the tutorial, both
for tests: the broker URL comes from AMQP_URL and the queue name from
RPC_QUEUE (defaults: amqp://localhost, rpc_queue).

    /usr/bin/python3 interop/rpc_server.py    # needs python3-pika
"""
import os

import pika

connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://localhost")))

channel = connection.channel()

queue = os.environ.get("RPC_QUEUE", "rpc_queue")
channel.queue_declare(queue=queue)


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def on_request(ch, method, props, body):
    n = int(body)

    print(f" [.] fib({n})", flush=True)
    response = fib(n)

    ch.basic_publish(exchange='',
                     routing_key=props.reply_to,
                     properties=pika.BasicProperties(correlation_id=props.correlation_id),
                     body=str(response))
    ch.basic_ack(delivery_tag=method.delivery_tag)


channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue=queue, on_message_callback=on_request)

print(" [x] Awaiting RPC requests", flush=True)
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()
