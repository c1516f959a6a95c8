/**
 * # bench/pika.ts: the Python clients written for this benchmark
 *
 * Two pika programs the benchmark runs with `python3 -c`, each in a process
 * of its own, against a server already running on `$RPC_QUEUE` at
 * `$AMQP_URL`: a sequential loop (the sequential measurement's Python pair,
 * with `interop/peer_server.py`) and one cold call with a timestamp after
 * each phase (the cold-start measurement).
 *
 * @module
 */

/** Sequential fib(1) calls over one pika connection; prints the latencies (ms) as JSON. */
export const PIKA_SEQUENTIAL = `
import json, os, time, uuid, pika
connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
channel = connection.channel()
callback = channel.queue_declare("", exclusive=True).method.queue
got = set()
channel.basic_consume(callback, lambda _c, _d, p, _b: got.add(p.correlation_id), auto_ack=True)
def call():
    ticket = str(uuid.uuid4())
    channel.basic_publish("", os.environ["RPC_QUEUE"], b"1",
                          pika.BasicProperties(reply_to=callback, correlation_id=ticket))
    give_up = time.monotonic() + 30
    while ticket not in got and time.monotonic() < give_up:
        connection.process_data_events(time_limit=None)
    got.discard(ticket)
for _ in range(50):
    call()
samples = []
for _ in range(int(os.environ["CALLS"])):
    started = time.perf_counter()
    call()
    samples.append((time.perf_counter() - started) * 1000)
connection.close()
print(json.dumps(samples))
`;

/** One cold fib(30) call with pika, stamping each phase in ms since the epoch, as JSON. */
export const PIKA_COLD = `
import time
stamps = [["python started", time.time() * 1000]]
import json, os, uuid, pika
stamps.append(["pika loaded", time.time() * 1000])
connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
stamps.append(["TCP connect and AMQP handshake", time.time() * 1000])
channel = connection.channel()
stamps.append(["channel opened", time.time() * 1000])
callback = channel.queue_declare("", exclusive=True).method.queue
stamps.append(["callback queue declared", time.time() * 1000])
ticket = str(uuid.uuid4())
got = []
channel.basic_consume(callback, lambda _c, _d, p, _b: got.append(p.correlation_id), auto_ack=True)
stamps.append(["consumer started", time.time() * 1000])
channel.basic_publish("", os.environ["RPC_QUEUE"], b"30",
                      pika.BasicProperties(reply_to=callback, correlation_id=ticket))
give_up = time.monotonic() + 30
while ticket not in got and time.monotonic() < give_up:
    connection.process_data_events(time_limit=None)
stamps.append(["call answered", time.time() * 1000])
connection.close()
stamps.append(["connection closed", time.time() * 1000])
print(json.dumps(stamps))
`;
