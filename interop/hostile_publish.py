"""Publishes RPC requests whose correlation_id and/or reply_to are not UTF-8.

Written for this project's tests: AMQP short strings are octets, and pika
sends a `bytes` value for them as it is, so this puts on the wire what a
careless or hostile peer could, to check that a server survives it.

Usage: hostile_publish.py --queue Q [--count N] [--field F] [--reply-to NAME]
                          [--body TEXT]
       hostile_publish.py --check [--count N] [--field F]

  --field correlation_id | reply_to | both (default both): which properties
      carry raw bytes. Request i (from 0) carries 100 bytes when i is even and
      4 bytes when it is odd; each starts with 0xff 0xfe, so none is UTF-8,
      and none holds a zero byte.
  --reply-to NAME: the reply_to of requests whose reply_to is not raw
      (default: hostile_publish.nowhere, a queue nobody declares, so the
      broker drops the replies). Their correlation_id, when not raw, is
      "hostile-<i>".
  --body TEXT: the request body (default "5").
  --check: instead, publish the requests to a queue of its own, read them
      back with pika and compare the properties byte for byte; exit 0 and one
      line if they arrived unchanged, 1 if not.

Publishing waits for the broker's confirms, so the requests are queued by the
time it exits. Environment: AMQP_URL (default amqp://localhost).
"""

import argparse
import os
import sys

import pika

FIELDS = ("correlation_id", "reply_to")


def raw_bytes(i):
    """100 bytes for even i, 4 for odd i; never UTF-8, never a zero byte."""
    if i % 2 == 0:
        return b"\xff\xfe" + bytes(0x80 + (i + k) % 0x40 for k in range(98))
    return bytes([0xFF, 0xFE, 0x80 + i % 0x40, 0xC0])


def properties_for(i, field, reply_to):
    raw = raw_bytes(i)
    hostile = FIELDS if field == "both" else (field,)
    return pika.BasicProperties(
        correlation_id=raw if "correlation_id" in hostile else f"hostile-{i}",
        reply_to=raw if "reply_to" in hostile else reply_to,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--field", choices=FIELDS + ("both",), default="both")
    parser.add_argument("--reply-to", default="hostile_publish.nowhere")
    parser.add_argument("--body", default="5")
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()
    if options.check == (options.queue is not None):
        parser.error("give exactly one of --queue Q and --check")
    if options.count < 1:
        parser.error("--count must be at least 1")

    connection = pika.BlockingConnection(
        pika.URLParameters(os.environ.get("AMQP_URL", "amqp://localhost")))
    channel = connection.channel()
    channel.confirm_delivery()
    queue = options.queue
    if options.check:
        queue = channel.queue_declare("", exclusive=True).method.queue
    sent = [properties_for(i, options.field, options.reply_to) for i in range(options.count)]
    for properties in sent:
        channel.basic_publish("", queue, options.body.encode(), properties)

    if not options.check:
        connection.close()
        print(f" [x] Sent {len(sent)} requests with raw bytes in {options.field} to {queue}",
              flush=True)
        return 0

    wrong = []
    for i, expected in enumerate(sent):
        _delivery, got, _body = channel.basic_get(queue, auto_ack=True)
        if got is None:
            wrong.append(f"request {i}: not in the queue")
            continue
        for field in FIELDS:
            # pika hands back the octets as bytes when they are not UTF-8.
            want, have = getattr(expected, field), getattr(got, field)
            if isinstance(want, bytes) and have != want:
                wrong.append(f"request {i} {field}: sent {want.hex()}, got {have!r}")
    connection.close()
    if wrong:
        print("\n".join(wrong), file=sys.stderr)
        return 1
    lengths = sorted({len(raw_bytes(i)) for i in range(len(sent))})
    what = " and ".join(FIELDS) if options.field == "both" else options.field
    print(f" [x] {len(sent)} requests read back: the raw {what} bytes "
          f"({' and '.join(map(str, lengths))} long) arrived unchanged", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
