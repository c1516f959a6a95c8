/**
 * Metrics, after the OpenTelemetry messaging semantic conventions:
 *
 * - `messaging.client.operation.duration` (histogram, seconds): each call
 *   of a client, from sending the request to settling with the reply or an
 *   error (operation `send`);
 * - `messaging.process.duration` (histogram, seconds): each request a
 *   server handles, from taking it to acking it (operation `process`);
 * - `amqp_rpc.operations.in_flight` (up-down counter): calls waiting for
 *   their reply, and requests being handled, now.
 *
 * Each carries `messaging.system` (`rabbitmq`), `messaging.destination.name`
 * (the queue), `messaging.operation.name` and, for a failure, `error.type`
 * (an `RpcError`'s code, else the error's name).
 *
 * Through `npm:@opentelemetry/api`: Deno's built-in OpenTelemetry
 * (`OTEL_DENO=true`, exporting over OTLP) or any SDK registered with the API.
 * With neither, {@linkcode startMeasure} returns `undefined` after a few
 * property reads, and nothing is made. rpc/_tracing.ts calls it where a call
 * or a request starts, and ends it where its span ends.
 *
 * @module
 */
import {
  type Attributes,
  createNoopMeter,
  type Histogram,
  type MeterProvider,
  metrics,
  type UpDownCounter,
} from "npm:@opentelemetry/api@1.10.0";
import { TRACER_NAME, TRACER_VERSION } from "./_tracing.ts";

/** The histograms' buckets, in seconds: those the semantic conventions advise. */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/** What every meter provider without an SDK behind it gives. */
const NOOP_METER = createNoopMeter();

/** Our instruments, made once per meter provider. */
interface Instruments {
  send: Histogram;
  process: Histogram;
  inFlight: UpDownCounter;
}

let cachedProvider: MeterProvider | undefined;
let cachedInstruments: Instruments | undefined;

/**
 * Our instruments, or undefined while metrics are off. The provider is
 * looked up on every call (an SDK may register one later), the verdict
 * cached per provider.
 */
function activeInstruments(): Instruments | undefined {
  const provider = metrics.getMeterProvider();
  if (provider === cachedProvider) return cachedInstruments;
  cachedProvider = provider;
  const meter = provider.getMeter(TRACER_NAME, TRACER_VERSION);
  if (meter === NOOP_METER) return cachedInstruments = undefined;
  const advice = { explicitBucketBoundaries: BUCKETS };
  return cachedInstruments = {
    send: meter.createHistogram("messaging.client.operation.duration", {
      description: "Duration of RPC calls, from sending the request to the reply or the error",
      unit: "s",
      advice,
    }),
    process: meter.createHistogram("messaging.process.duration", {
      description: "Duration of handling RPC requests, from taking one to acking it",
      unit: "s",
      advice,
    }),
    inFlight: meter.createUpDownCounter("amqp_rpc.operations.in_flight", {
      description: "RPC calls waiting for their reply, and requests being handled",
      unit: "{operation}",
    }),
  };
}

/**
 * Whether metrics are recorded: a meter provider is registered with the
 * API (Deno's, with `OTEL_DENO=true`, or an SDK's).
 *
 * @example
 * ```ts
 * if (metricsEnabled()) console.log("recording RPC metrics");
 * ```
 */
export function metricsEnabled(): boolean {
  return activeInstruments() !== undefined;
}

/** One call or request being measured: see {@linkcode startMeasure}. */
export interface Measure {
  /** Records its duration, with `error.type` if `failure` is given. Only the first call counts. */
  end(failure?: unknown): void;
}

/**
 * Starts measuring one call (`"send"`) or one request (`"process"`) on
 * `queue`; undefined, at no cost, while metrics are off.
 *
 * @example
 * ```ts
 * const measure = startMeasure("send", "rpc_queue");
 * // when the call settles:
 * measure?.end(); // or measure?.end(error)
 * ```
 */
export function startMeasure(operation: "send" | "process", queue: string): Measure | undefined {
  const instruments = activeInstruments();
  if (!instruments) return undefined;
  const attributes: Attributes = {
    "messaging.system": "rabbitmq",
    "messaging.destination.name": queue,
    "messaging.operation.name": operation,
  };
  const started = performance.now();
  instruments.inFlight.add(1, attributes);
  let ended = false;
  return {
    end(failure?: unknown) {
      if (ended) return;
      ended = true;
      instruments.inFlight.add(-1, attributes);
      const seconds = (performance.now() - started) / 1000;
      const histogram = operation === "send" ? instruments.send : instruments.process;
      histogram.record(
        seconds,
        failure === undefined ? attributes : { ...attributes, "error.type": errorType(failure) },
      );
    },
  };
}

/**
 * The `error.type` of a failure: its `code` if a string (an `RpcError`'s),
 * else its `name`, else `_OTHER`.
 *
 * @example
 * ```ts
 * errorType({ code: "timeout" }); // "timeout"
 * errorType(new RangeError("n too large")); // "RangeError"
 * ```
 */
export function errorType(failure: unknown): string {
  const { code, name } = (failure ?? {}) as Record<string, unknown>;
  if (typeof code === "string" && code) return code;
  if (typeof name === "string" && name) return name;
  return "_OTHER";
}
