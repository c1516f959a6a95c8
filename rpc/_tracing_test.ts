/**
 * Tests of rpc/_tracing.ts: the off path, the span logic against a stand-in
 * SDK, the real thing with Deno's OpenTelemetry (`OTEL_DENO=true`) exporting
 * to an OTLP/HTTP JSON receiver of our own, and one call through the
 * command lines rpc/fib_client.ts and rpc/fib_server.ts, traced end to end
 * (against a real broker).
 *
 * Run: `deno test -A rpc/_tracing_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  type Span,
  SpanStatusCode,
  trace,
  type TracerProvider,
} from "npm:@opentelemetry/api@1.10.0";
import {
  amqpHeaders,
  startCallSpan,
  startProcessSpan,
  TRACER_NAME,
  TRACER_VERSION,
  tracingEnabled,
} from "./_tracing.ts";
import { CONSUMER, type Exported, PRODUCER, startReceiver } from "./_test_otlp.ts";
import { FIB_CLIENT, FIB_SERVER, run, runDeno, spawnDeno } from "./_test_process.ts";
import { BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/;
const TRACING = new URL("./_tracing.ts", import.meta.url).href;

Deno.test("the tracer is named and versioned as the package", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("./deno.json", import.meta.url)));
  assert.equal(TRACER_NAME, config.name);
  assert.equal(TRACER_VERSION, config.version);
});

Deno.test("amqpHeaders reads strings and bytes, and nothing else", () => {
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const headers: Record<string, unknown> = {
    traceparent: Buffer.from(traceparent),
    tracestate: "congo=t61rcWkgMzE",
    "x-deadline": 1_700_000_000_000,
    baggage: new TextEncoder().encode("k=v"),
  };
  assert.equal(amqpHeaders.get(headers, "traceparent"), traceparent);
  assert.equal(amqpHeaders.get(headers, "tracestate"), "congo=t61rcWkgMzE");
  assert.equal(amqpHeaders.get(headers, "baggage"), "k=v");
  assert.equal(amqpHeaders.get(headers, "x-deadline"), undefined);
  assert.equal(amqpHeaders.get(headers, "constructor"), undefined); // own keys only
  assert.deepEqual(amqpHeaders.keys(headers), [
    "traceparent",
    "tracestate",
    "x-deadline",
    "baggage",
  ]);
});

Deno.test("with tracing off, nothing is made: no span, no headers, no global", async () => {
  const script = `
    import { startCallSpan, startProcessSpan, tracingEnabled } from "${TRACING}";
    console.log(JSON.stringify({
      enabled: tracingEnabled(),
      call: startCallSpan("q", "c") ?? null,
      process: startProcessSpan("q", "c", { traceparent: "x" }) ?? null,
      global: Symbol.for("opentelemetry.js.api.1") in globalThis,
    }));`;
  const result = await runDeno(["eval", script], 20_000, { OTEL_DENO: "false" });
  assert.equal(result.stderr, "");
  assert.deepEqual(JSON.parse(result.stdout), {
    enabled: false,
    call: null,
    process: null,
    global: false,
  });
});

/** A span as the stand-in SDK saw it end. */
interface Ended {
  name: string;
  attributes: Record<string, unknown>;
  status?: unknown;
}

/** A stand-in tracer provider that records each span as it ends. */
function standInProvider(ended: Ended[]): TracerProvider {
  const startSpan = (name: string, options: { attributes: Record<string, unknown> }) => {
    const record = { name, attributes: { ...options.attributes }, status: undefined as unknown };
    return {
      setAttribute: (key: string, value: unknown) => void (record.attributes[key] = value),
      setStatus: (status: unknown) => void (record.status = status),
      end: () => void ended.push(record),
      spanContext: () => ({ traceId: "1".repeat(32), spanId: "2".repeat(16), traceFlags: 1 }),
      isRecording: () => true,
    } as unknown as Span;
  };
  return { getTracer: () => ({ startSpan }) } as unknown as TracerProvider;
}

/** The attributes every span of ours on queue q has. */
const base = (operation: string) => ({
  "messaging.system": "rabbitmq",
  "messaging.operation.name": operation,
  "messaging.operation.type": operation,
  "messaging.destination.name": "q",
  "messaging.rabbitmq.destination.routing_key": "q",
});
const failed = (message: string) => ({ code: SpanStatusCode.ERROR, message });

/** What the stand-in sees end, in order, in the test below. */
const EXPECTED_ENDED: Ended[] = [
  {
    name: "send q",
    attributes: {
      ...base("send"),
      "messaging.message.conversation_id": "c1",
      "error.type": "timeout",
    },
    status: failed("no reply in 10 ms"),
  },
  {
    name: "process q",
    attributes: {
      ...base("process"),
      "messaging.message.conversation_id": "c1",
      "messaging.rabbitmq.message.delivery_tag": 7,
      "error.type": "RangeError",
    },
    status: failed("n too large"),
  },
  {
    name: "process q",
    attributes: { ...base("process"), "error.type": "skipped" },
    status: failed("the caller gave up: its deadline passed"),
  },
  {
    name: "process q",
    attributes: {
      ...base("process"),
      "messaging.message.conversation_id": "c3",
      "error.type": "_OTHER",
    },
    status: failed("odd"),
  },
  {
    name: "process q",
    attributes: { ...base("process"), "messaging.message.conversation_id": "c4" },
    status: undefined,
  },
];

Deno.test({
  name: "an SDK registered late is seen at once, and spans end with what they are given",
  ignore: tracingEnabled(), // this process traced already (OTEL_DENO=true): no room for a stand-in
  fn() {
    const ended: Ended[] = [];
    const provider = standInProvider(ended);
    assert.equal(startCallSpan("q", "c"), undefined);
    assert.ok(trace.setGlobalTracerProvider(provider));
    try {
      assert.equal(tracingEnabled(), true);
      const call = startCallSpan("q", "c1")!;
      assert.deepEqual(call.headers, {}); // no propagator registered
      call.end({ code: "timeout", message: "no reply in 10 ms" });
      call.end(); // only the first end counts
      const request = startProcessSpan("q", "c1", undefined, 7)!;
      assert.equal(request.run(() => 42), 42);
      request.end(new RangeError("n too large"));
      startProcessSpan("q", undefined, {})!.skip();
      startProcessSpan("q", "c3", {})!.end("odd");
      startProcessSpan("q", "c4", {})!.end();
    } finally {
      trace.disable();
    }
    assert.equal(tracingEnabled(), false);
    assert.deepEqual(ended, EXPECTED_ENDED);
  },
});

/**
 * A call and its request as a program makes them, with Deno's OpenTelemetry on:
 * the headers as amqplib hands them over (here traceparent as bytes, as some
 * clients send it), a handler that makes a span of its own, a refused and a
 * skipped request.
 */
const SPANS_SCRIPT = `
    import { Buffer } from "node:buffer";
    import { trace } from "npm:@opentelemetry/api@1.10.0";
    import { startCallSpan, startProcessSpan, tracingEnabled } from "${TRACING}";
    const call = startCallSpan("unit_q", "corr-1");
    const { traceparent, ...rest } = call.headers;
    const headers = { "x-deadline": 1, traceparent: Buffer.from(traceparent), ...rest };
    const request = startProcessSpan("unit_q", "corr-1", headers, 1);
    const inside = await request.run(async () => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      const user = trace.getTracer("user").startSpan("user work");
      user.end();
      return trace.getActiveSpan()?.spanContext().spanId;
    });
    request.end({ code: "rejected", message: "n must be at most 10000" });
    call.end({ code: "remote", message: "n must be at most 10000" });
    startProcessSpan("unit_q", "corr-2", {}, 2).skip();
    console.log(JSON.stringify({ enabled: tracingEnabled(), traceparent, inside }));
    Deno.exit(0); // spans are flushed on Deno.exit too`;

Deno.test("with OTEL_DENO=true, the spans are exported, linked, with their attributes", async () => {
  await using receiver = startReceiver();
  const result = await runDeno(["eval", SPANS_SCRIPT], 20_000, {
    ...receiver.env("unit"),
    OTEL_DENO_CONSOLE: "ignore",
  });
  assert.equal(result.stderr, "");
  assert.equal(result.code, 0);
  const seen = JSON.parse(result.stdout);
  assert.equal(seen.enabled, true);
  assert.match(seen.traceparent, TRACEPARENT);
  await waitFor("the spans", () => receiver.spans.length >= 4);
  const [send] = receiver.named("send unit_q");
  const [process, skipped] = receiver.named("process unit_q");
  const [user] = receiver.named("user work");
  assert.equal(send.kind, PRODUCER);
  assert.equal(process.kind, CONSUMER);
  assert.equal(`00-${send.traceId}-${send.spanId}-01`, seen.traceparent);
  assert.equal(send.scope, TRACER_NAME);
  assert.equal(send.version, TRACER_VERSION);
  assert.equal(send.service, "unit");
  // The server's span: a child of the call's, linked to it; the handler's spans nest under it.
  assert.equal(process.traceId, send.traceId);
  assert.equal(process.parentSpanId, send.spanId);
  assert.deepEqual(process.links, [{ traceId: send.traceId, spanId: send.spanId }]);
  assert.equal(seen.inside, process.spanId);
  assert.equal(user.parentSpanId, process.spanId);
  assert.equal(user.traceId, send.traceId);
  assert.deepEqual(send.attributes, {
    "messaging.system": "rabbitmq",
    "messaging.operation.name": "send",
    "messaging.operation.type": "send",
    "messaging.destination.name": "unit_q",
    "messaging.rabbitmq.destination.routing_key": "unit_q",
    "messaging.message.conversation_id": "corr-1",
    "error.type": "remote",
  });
  assert.deepEqual(send.status, { code: 2, message: "n must be at most 10000" });
  assert.equal(process.attributes["messaging.rabbitmq.message.delivery_tag"], 1);
  assert.equal(process.attributes["error.type"], "rejected");
  assert.deepEqual(process.status, { code: 2, message: "n must be at most 10000" });
  // No traceparent: a root span of its own.
  assert.equal(skipped.parentSpanId, "");
  assert.notEqual(skipped.traceId, send.traceId);
  assert.equal(skipped.attributes["error.type"], "skipped");
  assert.equal(skipped.status.code, 2);
});

/** A call's send span has, in its trace, the server's process span as its child, both named and attributed. */
function assertOneTrace(send: Exported, processes: Exported[], queue: string) {
  const process = processes.find((span) => span.traceId === send.traceId);
  assert.ok(process, `a process span in the trace of ${send.traceId}`);
  assert.equal(send.service, "fib_client");
  assert.equal(process.service, "fib_server");
  assert.equal(send.kind, PRODUCER);
  assert.equal(process.kind, CONSUMER);
  assert.equal(process.parentSpanId, send.spanId);
  for (const [span, operation] of [[send, "send"], [process, "process"]] as const) {
    assert.equal(span.scope, TRACER_NAME);
    assert.equal(span.attributes["messaging.system"], "rabbitmq");
    assert.equal(span.attributes["messaging.destination.name"], queue);
    assert.equal(span.attributes["messaging.operation.type"], operation);
    assert.match(String(span.attributes["messaging.message.conversation_id"]), /^[\w-]{8,}$/);
  }
  assert.equal(
    process.attributes["messaging.message.conversation_id"],
    send.attributes["messaging.message.conversation_id"],
  );
}

Deno.test("a call through the command lines is one trace: send on the client, process on the server", async () => {
  await using broker = await openBroker();
  await using receiver = startReceiver();
  const queue = broker.queue;
  await using server = spawnDeno(
    ["run", "-A", FIB_SERVER, "--url", BROKER_URL, "--queue", queue, "--quiet"],
    { env: receiver.env("fib_server"), disposeSignal: "SIGTERM" },
  );
  await waitFor("the server to consume", async () => {
    return (await broker.consumerCount(queue).catch(() => 0)) > 0;
  });
  const env = receiver.env("fib_client");
  const answered = await run(
    FIB_CLIENT,
    ["--url", BROKER_URL, "--queue", queue, "30"],
    20_000,
    env,
  );
  assert.equal(answered.stdout, " [x] Requesting fib(30)\n [.] Got 832040\n");
  assert.equal(answered.code, 0);
  const refused = await run(
    FIB_CLIENT,
    ["--url", BROKER_URL, "--queue", queue, "10001"],
    20_000,
    env,
  );
  assert.equal(refused.code, 1);
  assert.equal((await server.stop("SIGTERM")).code, 0); // it exits with Deno.exit(0): spans flushed
  await waitFor("the spans", () => receiver.spans.length >= 4, 5_000).catch(() => {});
  const names = receiver.spans.map((span) => span.name);
  assert.ok(names.length >= 4, `spans exported: ${JSON.stringify(names)} (hooks not wired?)`);

  const sends = receiver.named(`send ${queue}`);
  const processes = receiver.named(`process ${queue}`);
  assert.equal(sends.length, 2, "one send span per call");
  assert.equal(processes.length, 2, "one process span per request");
  for (const send of sends) assertOneTrace(send, processes, queue);
  // fib(30) answered; fib(10001) refused by the server: both spans say why.
  const [ok, failed] = sends.map((send) => [
    send,
    processes.find((span) => span.traceId === send.traceId)!,
  ]).sort(([a], [b]) =>
    (a.attributes["error.type"] ? 1 : 0) - (b.attributes["error.type"] ? 1 : 0)
  );
  for (const span of ok) {
    assert.equal(span.status.code, 0);
    assert.equal(span.attributes["error.type"], undefined);
  }
  assert.equal(failed[0].attributes["error.type"], "bad-request");
  assert.equal(failed[0].status.code, 2);
  assert.match(failed[0].status.message, /10000/);
  assert.equal(typeof failed[1].attributes["error.type"], "string");
  assert.equal(failed[1].status.code, 2);
  assert.match(failed[1].status.message, /10000/);
});
