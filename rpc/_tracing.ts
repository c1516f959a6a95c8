/**
 * Tracing, after the OpenTelemetry messaging semantic conventions: a span
 * per call on the client (`send <queue>`, PRODUCER), one per request on the
 * server (`process <queue>`, CONSUMER), linked by the W3C `traceparent` and
 * `tracestate` the request carries in its AMQP headers. The server's span is
 * a child of the caller's (allowed for single messages), and links to it.
 *
 * Through `npm:@opentelemetry/api`: Deno's built-in OpenTelemetry
 * (`OTEL_DENO=true`) or any SDK registered with the API. With neither, the
 * `start*` functions return `undefined` after a few property reads.
 *
 * @module
 */
import {
  type Attributes,
  type Context,
  context,
  propagation,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  trace,
  type Tracer,
  type TracerProvider,
} from "npm:@opentelemetry/api@1.10.0";
import { errorType, type Measure, startMeasure } from "./_metrics.ts";

/**
 * The tracer's name: the package's (rpc/deno.json).
 *
 * @example
 * ```ts
 * import { trace } from "npm:@opentelemetry/api@1.10.0";
 *
 * trace.getTracer(TRACER_NAME, TRACER_VERSION);
 * ```
 */
export const TRACER_NAME = "@amqp-rpc/rpc";

/**
 * The tracer's version: the package's, as in rpc/deno.json (a test checks it).
 *
 * @example
 * ```ts
 * console.log(`${TRACER_NAME}@${TRACER_VERSION}`);
 * ```
 */
export const TRACER_VERSION = "0.1.0";

/** What the API's own provider delegates to while no SDK is registered. */
const NOOP_PROVIDER = new ProxyTracerProvider().getDelegate();

let cachedProvider: TracerProvider | undefined;
let cachedTracer: Tracer | undefined;

/**
 * Our tracer, or undefined while tracing is off. Looked up on every call:
 * Deno registers its provider before user code runs, but an SDK may do so
 * (or `trace.disable()` undo it) later, setting the delegate of the same
 * API provider object: hence no cached verdict, but a look at the delegate.
 */
function activeTracer(): Tracer | undefined {
  const provider = trace.getTracerProvider();
  if (provider !== cachedProvider) [cachedProvider, cachedTracer] = [provider, undefined];
  if (cachedTracer) return cachedTracer;
  if (provider instanceof ProxyTracerProvider && provider.getDelegate() === NOOP_PROVIDER) {
    return undefined;
  }
  return cachedTracer = provider.getTracer(TRACER_NAME, TRACER_VERSION);
}

/**
 * Whether spans are made: a tracer provider is registered with the API
 * (Deno's, with `OTEL_DENO=true`, or an SDK's). Cheap: ask on every call.
 *
 * @example
 * ```ts
 * if (tracingEnabled()) console.log("tracing RPC calls");
 * ```
 */
export function tracingEnabled(): boolean {
  return activeTracer() !== undefined;
}

/** A client's call, traced: see {@linkcode startCallSpan}. */
export interface CallSpan {
  /** `traceparent` (and `tracestate`, baggage) to add to the request's AMQP headers. */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * Ends the span: without `error`, the call was answered; with it, status
   * ERROR with the error's message, and `error.type` its `code` if a string
   * (an `RpcError`'s), else its `name`. Only the first call counts.
   */
  end(error?: unknown): void;
}

/**
 * Starts the span of one call, `send <queue>` (kind PRODUCER), a child of
 * the caller's active span; undefined when tracing is off.
 *
 * @example
 * ```ts
 * import { Buffer } from "node:buffer";
 * import amqp from "npm:amqplib@2.3.1";
 *
 * const channel = await (await amqp.connect("amqp://localhost")).createChannel();
 * const correlationId = crypto.randomUUID();
 * const span = startCallSpan("rpc_queue", correlationId);
 * const body = Buffer.from("30");
 * channel.sendToQueue("rpc_queue", body, { correlationId, headers: { ...span?.headers } });
 * // when the call settles:
 * span?.end(); // or span?.end(error)
 * ```
 */
export function startCallSpan(queue: string, correlationId: string): CallSpan | undefined {
  const tracer = activeTracer();
  const measure = startMeasure("send", queue); // metrics (rpc/_metrics.ts) end with the span
  if (!tracer) return measure && new Traced(undefined, ROOT_CONTEXT, {}, measure);
  const span = tracer.startSpan(`send ${queue}`, {
    kind: SpanKind.PRODUCER,
    attributes: attributes("send", queue, correlationId),
  });
  const spanContext = trace.setSpan(context.active(), span);
  const headers: Record<string, string> = {};
  propagation.inject(spanContext, headers);
  return new Traced(span, spanContext, headers, measure);
}

/** A server's handling of one request, traced: see {@linkcode startProcessSpan}. */
export interface ProcessSpan {
  /** Runs `fn` (the handler) in the span's context: spans it starts are children of this one. */
  run<T>(fn: () => T): T;
  /**
   * Ends the span: without `outcome`, the request was answered. With it,
   * status ERROR with its message, and `error.type` its `code` if a string,
   * else its `name`: pass `{ code: "rejected", message }` for a bad request,
   * or the handler's error itself. Only the first call counts.
   */
  end(outcome?: unknown): void;
  /** Ends the span for a request not computed because its caller gave up: `error.type` `skipped`. */
  skip(reason?: string): void;
}

/**
 * Starts the span of one request, `process <queue>` (kind CONSUMER), a
 * child of the caller's span whose context the AMQP headers carry (a root
 * span if they carry none); undefined when tracing is off. `headers` are
 * amqplib's: values are strings, or Buffers from clients that send bytes.
 *
 * @example
 * ```ts
 * import type { ConsumeMessage } from "npm:amqplib@2.3.1";
 *
 * const handler = (request: Uint8Array) => request;
 * function onRequest(message: ConsumeMessage) {
 *   const { correlationId, headers } = message.properties;
 *   const span = startProcessSpan("rpc_queue", correlationId, headers);
 *   const reply = span ? span.run(() => handler(message.content)) : handler(message.content);
 *   span?.end(); // after the reply is sent; span?.end(error) for an error reply
 *   return reply;
 * }
 * ```
 */
export function startProcessSpan(
  queue: string,
  correlationId: unknown,
  headers: Record<string, unknown> | undefined,
  deliveryTag?: number,
): ProcessSpan | undefined {
  const tracer = activeTracer();
  const measure = startMeasure("process", queue);
  if (!tracer) return measure && new Traced(undefined, ROOT_CONTEXT, {}, measure);
  // ROOT, not the active context: that of the consumer callback is no parent of the request.
  const parent = headers ? propagation.extract(ROOT_CONTEXT, headers, amqpHeaders) : ROOT_CONTEXT;
  const creation = trace.getSpanContext(parent);
  const span = tracer.startSpan(`process ${queue}`, {
    kind: SpanKind.CONSUMER,
    attributes: attributes("process", queue, correlationId, deliveryTag),
    links: creation ? [{ context: creation }] : undefined,
  }, parent);
  return new Traced(span, trace.setSpan(parent, span), {}, measure);
}

/**
 * Reads propagation fields from amqplib's decoded headers: a string
 * (`longstr`, as we and most clients send them) or bytes (some clients send
 * a byte array); anything else is ignored.
 *
 * @example
 * ```ts
 * import { propagation, ROOT_CONTEXT } from "npm:@opentelemetry/api@1.10.0";
 *
 * propagation.extract(ROOT_CONTEXT, { traceparent: "00-…" }, amqpHeaders);
 * ```
 */
export const amqpHeaders: {
  keys(carrier: Record<string, unknown>): string[];
  get(carrier: Record<string, unknown>, key: string): string | undefined;
} = {
  keys: (carrier) => Object.keys(carrier),
  get(carrier, key) {
    const value = Object.hasOwn(carrier, key) ? carrier[key] : undefined;
    if (typeof value === "string") return value;
    if (value instanceof Uint8Array) return new TextDecoder().decode(value);
  },
} satisfies TextMapGetter<Record<string, unknown>>;

/** The attributes of both spans, set at the start (samplers may read them). */
function attributes(
  operation: "send" | "process",
  queue: string,
  correlationId: unknown,
  deliveryTag?: number,
): Attributes {
  const result: Attributes = {
    "messaging.system": "rabbitmq",
    "messaging.operation.name": operation,
    "messaging.operation.type": operation,
    // Default exchange: the routing key is the queue, and names the destination.
    "messaging.destination.name": queue,
    "messaging.rabbitmq.destination.routing_key": queue,
  };
  if (typeof correlationId === "string" && correlationId) {
    result["messaging.message.conversation_id"] = correlationId;
  }
  if (deliveryTag !== undefined) result["messaging.rabbitmq.message.delivery_tag"] = deliveryTag;
  return result;
}

/** Both kinds: a call's span has headers, a request's a context to run the handler in; either may only be measured. */
class Traced implements CallSpan, ProcessSpan {
  readonly headers: Readonly<Record<string, string>>;
  #span: Span | undefined;
  readonly #context: Context;
  #measure: Measure | undefined;

  constructor(
    span: Span | undefined,
    spanContext: Context,
    headers: Record<string, string>,
    measure: Measure | undefined,
  ) {
    this.#span = span;
    this.#context = spanContext;
    this.headers = headers;
    this.#measure = measure;
  }

  run<T>(fn: () => T): T {
    return this.#context === ROOT_CONTEXT ? fn() : context.with(this.#context, fn); // ROOT: untraced
  }

  /** Status ERROR, with the message, and `error.type`, for a failure; nothing for success. */
  end(failure?: unknown): void {
    this.#measure?.end(failure);
    this.#measure = undefined;
    const span = this.#span;
    if (!span) return;
    this.#span = undefined;
    if (failure !== undefined) {
      const { message } = (failure ?? {}) as Record<string, unknown>;
      span.setAttribute("error.type", errorType(failure));
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: typeof message === "string" ? message : String(failure),
      });
    }
    span.end();
  }

  skip(reason = "the caller gave up: its deadline passed"): void {
    this.end({ code: "skipped", message: reason });
  }
}
