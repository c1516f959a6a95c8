"""A stand-in for the official tutorial RPC clients, written for this project.

This is not one of the RabbitMQ tutorial programs. It is a small client of our
own that does on the wire what they do, so the tests in rpc_test.ts can check
that our server mixes with their clients without shipping anyone else's code.
Usage: peer_client.py N [--declare ...] [--reply ...]

  --declare none     touches no request queue, as the official clients do
                     today (the default);
  --declare classic  first declares the request queue non-durable classic, as
                     the client among amqplib's bundled examples does;
  --declare quorum   first declares it durable with x-queue-type: quorum, as
                     today's official servers do.

  --reply exclusive  answers come to an exclusive queue named by the broker
                     (the default);
  --reply direct     answers come by direct reply-to (amq.rabbitmq.reply-to),
                     as today's official Node client does.

It sends the decimal n with a fresh correlation_id and its reply queue in
reply_to, prints " [.] Got <reply body>" for the reply that carries that
correlation_id, and ignores any other.

Environment: RPC_QUEUE (default rpc_queue), AMQP_URL (default
amqp://localhost).

Exit codes: 0 answered; 1 no answer within 10 s, or no broker; 2 bad
arguments; 3 the queue exists with other settings (406 PRECONDITION_FAILED).
"""

import argparse
import os
import sys
import time
import uuid

import pika
import pika.exceptions

DECLARATIONS = {
    "quorum": {"durable": True, "arguments": {"x-queue-type": "quorum"}},
    "classic": {"durable": False},
    "none": None,
}
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
WAIT_SECONDS = 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--declare", choices=sorted(DECLARATIONS), default="none")
    parser.add_argument("--reply", choices=["direct", "exclusive"], default="exclusive")
    options = parser.parse_args()
    queue = os.environ.get("RPC_QUEUE", "rpc_queue")
    url = os.environ.get("AMQP_URL", "amqp://localhost")

    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as error:
        print(f"peer_client: cannot connect: {error!r}", file=sys.stderr)
        return 1
    channel = connection.channel()
    declaration = DECLARATIONS[options.declare]
    if declaration is not None:
        try:
            channel.queue_declare(queue, **declaration)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 406:
                raise
            print(f"peer_client: 406, {queue} exists with other settings: {error.reply_text}",
                  file=sys.stderr)
            connection.close()
            return 3

    if options.reply == "direct":
        reply_queue = DIRECT_REPLY_TO  # must be consumed before we publish
    else:
        reply_queue = channel.queue_declare("", exclusive=True).method.queue
    ticket = str(uuid.uuid4())
    answers = []

    def take(_on, _delivery, properties, body):
        if properties.correlation_id == ticket:
            answers.append(body)

    channel.basic_consume(reply_queue, on_message_callback=take, auto_ack=True)
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        properties=pika.BasicProperties(reply_to=reply_queue, correlation_id=ticket),
        body=str(options.n).encode(),
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while not answers and time.monotonic() < deadline:
        connection.process_data_events(time_limit=max(0, min(0.1, deadline - time.monotonic())))
    connection.close()
    if not answers:
        print(f"peer_client: no answer for {options.n} within {WAIT_SECONDS} s", file=sys.stderr)
        return 1
    print(f" [.] Got {answers[0].decode('utf-8', 'replace')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
