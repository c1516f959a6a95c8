/**
 * Tests of rpc/_metrics.ts: nothing made while metrics are off, and the
 * real thing: the command-line server and client with Deno's OpenTelemetry
 * (`OTEL_DENO=true`) exporting their metrics to an OTLP/HTTP JSON receiver
 * of our own, against the broker.
 *
 * Run: `deno test -A rpc/_metrics_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type MeterProvider, metrics } from "npm:@opentelemetry/api@1.10.0";
import { startCallSpan, startProcessSpan } from "./_tracing.ts";
import { type ExportedPoint, startReceiver } from "./_test_otlp.ts";
import { FIB_CLIENT, FIB_SERVER, runDeno, spawnDeno } from "./_test_process.ts";
import { BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

const METRICS = new URL("./_metrics.ts", import.meta.url).href;

Deno.test("with metrics off, nothing is made: no measure, no global", async () => {
  const script = `
    import { metricsEnabled, startMeasure } from "${METRICS}";
    console.log(JSON.stringify({
      enabled: metricsEnabled(),
      send: startMeasure("send", "q") ?? null,
      process: startMeasure("process", "q") ?? null,
      global: Symbol.for("opentelemetry.js.api.1") in globalThis,
    }));`;
  const result = await runDeno(["eval", script], 20_000, { OTEL_DENO: "false" });
  assert.equal(result.stderr, "");
  assert.deepEqual(JSON.parse(result.stdout), {
    enabled: false,
    send: null,
    process: null,
    global: false,
  });
});

Deno.test("with an SDK's meter provider and tracing off, the spans' ends are measured all the same", () => {
  const recorded: { name: string; value: number; attributes: Record<string, unknown> }[] = [];
  const instrument = (name: string) => {
    const note = (value: number, attributes = {}) =>
      void recorded.push({ name, value, attributes });
    return { record: note, add: note };
  };
  const meter = { createHistogram: instrument, createUpDownCounter: instrument };
  const provider = { getMeter: () => meter } as unknown as MeterProvider;
  assert.ok(metrics.setGlobalMeterProvider(provider));
  try {
    const call = startCallSpan("q", "c1");
    assert.deepEqual(call?.headers, {}); // tracing is off: no trace context to send
    call?.end({ code: "timeout" });
    call?.end(); // only the first end counts
    const request = startProcessSpan("q", "c1", undefined);
    assert.equal(request?.run(() => 42), 42);
    request?.end();
  } finally {
    metrics.disable();
  }
  const base = (operation: string) => ({ ...attributes("q", operation) });
  assert.deepEqual(
    recorded.map(({ name, value, attributes }) => ({
      name,
      value: name.endsWith("in_flight") ? value : typeof value,
      attributes,
    })),
    [
      { name: "amqp_rpc.operations.in_flight", value: 1, attributes: base("send") },
      { name: "amqp_rpc.operations.in_flight", value: -1, attributes: base("send") },
      {
        name: "messaging.client.operation.duration",
        value: "number",
        attributes: attributes("q", "send", "timeout"),
      },
      { name: "amqp_rpc.operations.in_flight", value: 1, attributes: base("process") },
      { name: "amqp_rpc.operations.in_flight", value: -1, attributes: base("process") },
      { name: "messaging.process.duration", value: "number", attributes: base("process") },
    ],
  );
});

/**
 * Runs rpc/fib_client.ts to its end, killing it after 20 s. (Once in some
 * dozens of runs here, Deno 2.9 with OTEL_DENO=true hung in its exit, where
 * no SIGTERM is heard: a test must not wait for it forever.)
 */
async function runClient(args: string[], env: Record<string, string>) {
  await using client = spawnDeno(["run", "-A", FIB_CLIENT, ...args], { env });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), 20_000);
  });
  const status = await Promise.race([client.status, late]).finally(() => clearTimeout(timer));
  assert.ok(status, `fib_client ${args.join(" ")} did not exit within 20 s: ${client.stderr}`);
  return { code: status.code, stdout: client.stdout, stderr: client.stderr };
}

/** The attributes of our metrics on `queue` for `operation`. */
const attributes = (queue: string, operation: string, errorType?: string) => ({
  "messaging.system": "rabbitmq",
  "messaging.destination.name": queue,
  "messaging.operation.name": operation,
  ...(errorType ? { "error.type": errorType } : {}),
});

/** The latest point (cumulative) of `name` from `service` with exactly these attributes. */
function latest(
  points: ExportedPoint[],
  service: string,
  name: string,
  wanted: Record<string, unknown>,
) {
  return points.filter((point) =>
    point.service === service && point.name === name &&
    JSON.stringify(Object.entries(point.attributes).sort()) ===
      JSON.stringify(Object.entries(wanted).sort())
  ).at(-1);
}

/** A duration histogram in seconds, of `count` operations that took more than 0 s and less than `maxSum` s in all. */
function assertDurations(point: ExportedPoint, count: number, maxSum: number): void {
  assert.equal(point.type, "histogram");
  assert.equal(point.unit, "s");
  assert.equal(point.count, count);
  assert.ok(point.sum! > 0 && point.sum! < maxSum, `sum ${point.sum} s`);
}

Deno.test("with OTEL_DENO=true, the server and the client export duration histograms and calls in flight", async () => {
  await using broker = await openBroker();
  await using receiver = startReceiver();
  const queue = broker.queue;
  await using server = spawnDeno(
    ["run", "-A", FIB_SERVER, "--url", BROKER_URL, "--queue", queue, "--quiet"],
    // Exports every 500 ms as it runs (Deno's default: 60 s), and at exit.
    { env: { ...receiver.env("fib_server"), OTEL_METRIC_EXPORT_INTERVAL: "500" } },
  );
  await waitFor("the server to consume", async () => {
    return (await broker.consumerCount(queue).catch(() => 0)) > 0;
  });
  const env = receiver.env("fib_client");
  const args = ["--url", BROKER_URL, "--queue", queue];
  const answered = await runClient([...args, "10", "20", "30"], env);
  assert.equal(answered.code, 0, answered.stderr);
  const refused = await runClient([...args, "10001"], env);
  assert.equal(refused.code, 1);
  assert.equal((await server.stop("SIGTERM")).code, 0); // Deno.exit(0) flushes the metrics
  const { points } = receiver;
  const process = "messaging.process.duration";
  const send = "messaging.client.operation.duration";
  await waitFor("the metrics", () => {
    return latest(points, "fib_server", process, attributes(queue, "process")) !== undefined &&
      latest(points, "fib_client", send, attributes(queue, "send")) !== undefined;
  }, 10_000);
  assertDurations(latest(points, "fib_server", process, attributes(queue, "process"))!, 3, 10);
  // Refused: a BadRequestError (error.type bad-request where error replies carry codes).
  const refusedOnServer = ["BadRequestError", "bad-request"].map((type) =>
    latest(points, "fib_server", process, attributes(queue, "process", type))
  ).find(Boolean);
  assert.equal(refusedOnServer?.count, 1, JSON.stringify(points.filter((p) => p.name === process)));
  assertDurations(latest(points, "fib_client", send, attributes(queue, "send"))!, 3, 30);
  const failedCall = ["remote", "bad-request"].map((type) =>
    latest(points, "fib_client", send, attributes(queue, "send", type))
  ).find(Boolean);
  assert.equal(failedCall?.count, 1);
  // In flight: up 1, down 1 for each; none left at the end.
  const inFlight = latest(
    points,
    "fib_server",
    "amqp_rpc.operations.in_flight",
    attributes(queue, "process"),
  );
  assert.equal(inFlight?.type, "sum");
  assert.equal(inFlight?.value, 0);
  assert.equal(
    latest(points, "fib_client", "amqp_rpc.operations.in_flight", attributes(queue, "send"))?.value,
    0,
  );
  // SHOW_METRICS=1 prints what the receiver got (for a report).
  if (Deno.env.get("SHOW_METRICS")) console.log(JSON.stringify(points));
});
