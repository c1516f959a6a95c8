"""A stand-in for the official tutorial RPC servers, written for this project.

This is not one of the RabbitMQ tutorial programs. It is a small server of our
own that does on the wire what they do, so the tests in rpc_test.ts can check
that our client and server mix with theirs without shipping anyone else's
code:

  --declare quorum   declares the request queue durable with
                     x-queue-type: quorum, as every official RPC server has
                     done since 2026-03-16 (the default);
  --declare classic  declares it non-durable classic, as older copies of the
                     tutorials and amqplib's bundled examples do.

It takes one request at a time (prefetch 1), answers the decimal n in the body
with fib(n) as decimal text, published to the request's reply_to with its
correlation_id, and then acks. Anything else in the request is ignored.

Environment: RPC_QUEUE (default rpc_queue), AMQP_URL (default
amqp://localhost). Prints one line once it consumes, and one when it stops.

Exit codes: 0 stopped by SIGTERM or SIGINT; 1 broker unreachable or lost, or
the consumer cancelled; 2 bad arguments; 3 the queue exists with other
settings (406 PRECONDITION_FAILED).
"""

import argparse
import os
import signal
import sys

import pika
import pika.exceptions

DECLARATIONS = {
    "quorum": {"durable": True, "arguments": {"x-queue-type": "quorum"}},
    "classic": {"durable": False},
}


def fibonacci(n):
    """fib(0) = 0, fib(1) = 1, by iteration."""
    low, high = 0, 1
    for _ in range(n):
        low, high = high, low + high
    return low


def say(line, stream=sys.stdout):
    print(line, file=stream, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--declare", choices=sorted(DECLARATIONS), default="quorum")
    options = parser.parse_args()
    queue = os.environ.get("RPC_QUEUE", "rpc_queue")
    url = os.environ.get("AMQP_URL", "amqp://localhost")

    stop = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, _frame: stop.append(received))

    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as error:
        say(f"peer_server: cannot connect: {error!r}", sys.stderr)
        return 1
    channel = connection.channel()
    try:
        channel.queue_declare(queue, **DECLARATIONS[options.declare])
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 406:
            raise
        say(f"peer_server: 406, {queue} exists with other settings: {error.reply_text}",
            sys.stderr)
        connection.close()
        return 3
    channel.basic_qos(prefetch_count=1)

    def answer(on, delivery, properties, body):
        text = body.decode("ascii", "replace").strip()
        if properties.reply_to and text.isascii() and text.isdigit():
            on.basic_publish(
                exchange="",
                routing_key=properties.reply_to,
                properties=pika.BasicProperties(correlation_id=properties.correlation_id),
                body=str(fibonacci(int(text))).encode(),
            )
        on.basic_ack(delivery.delivery_tag)

    cancelled = []
    channel.add_on_cancel_callback(lambda _frame: cancelled.append(True))
    tag = channel.basic_consume(queue, on_message_callback=answer)
    say(f" [x] peer server ready on {queue} ({options.declare})")
    try:
        # The signal handlers only raise a flag, looked at between deliveries,
        # so a request is never cut off half answered.
        while not stop and not cancelled:
            connection.process_data_events(time_limit=0.1)
        if not cancelled:
            channel.basic_cancel(tag)
        connection.close()  # unacked requests, if any, go back to the queue
    except pika.exceptions.AMQPError as error:
        say(f"peer_server: lost the broker: {error!r}", sys.stderr)
        return 1
    if not stop:
        say(f"peer_server: the broker cancelled the consumer ({queue} deleted?)", sys.stderr)
        return 1
    say(f" [x] peer server stopped ({signal.Signals(stop[0]).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
