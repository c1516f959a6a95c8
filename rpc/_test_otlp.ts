/**
 * A receiver of OpenTelemetry traces and metrics for the tests: it takes
 * OTLP/HTTP JSON exports on a loopback port of its own and keeps their
 * spans and metric data points, flattened.
 *
 * @module
 */

/** A span as our receiver got it, flattened. */
export interface Exported {
  service: string;
  scope: string;
  version: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  /** OTLP's numbering: 4 PRODUCER, 5 CONSUMER. */
  kind: number;
  attributes: Record<string, unknown>;
  status: { code: number; message: string };
  links: { traceId: string; spanId: string }[];
}

export const PRODUCER = 4;
export const CONSUMER = 5;

type KeyValue = { key: string; value: Record<string, unknown> };
const values = (list: KeyValue[] = []) =>
  Object.fromEntries(list.map(({ key, value }) => {
    const [[type, raw]] = Object.entries(value);
    return [key, type === "intValue" ? Number(raw) : raw];
  }));

/** Flattens an OTLP/JSON ExportTraceServiceRequest. */
// deno-lint-ignore no-explicit-any
function flatten(request: any): Exported[] {
  // deno-lint-ignore no-explicit-any
  return request.resourceSpans.flatMap((resource: any) =>
    // deno-lint-ignore no-explicit-any
    resource.scopeSpans.flatMap((scope: any) =>
      // deno-lint-ignore no-explicit-any
      scope.spans.map((span: any) => ({
        service: values(resource.resource?.attributes)["service.name"] as string,
        scope: scope.scope?.name,
        version: scope.scope?.version,
        traceId: span.traceId,
        spanId: span.spanId,
        parentSpanId: span.parentSpanId ?? "",
        name: span.name,
        kind: span.kind,
        attributes: values(span.attributes),
        status: { code: span.status?.code ?? 0, message: span.status?.message ?? "" },
        // deno-lint-ignore no-explicit-any
        links: (span.links ?? []).map((link: any) => ({
          traceId: link.traceId,
          spanId: link.spanId,
        })),
      }))
    )
  );
}

/** A metric data point as our receiver got it, flattened. */
export interface ExportedPoint {
  service: string;
  scope: string;
  /** The metric's name and unit. */
  name: string;
  unit: string;
  /** `histogram`, `sum` (counters, up-down counters) or `gauge`. */
  type: string;
  attributes: Record<string, unknown>;
  /** Histograms: how many values, and their sum. */
  count?: number;
  sum?: number;
  /** Sums and gauges: the value. */
  value?: number;
}

/** Flattens an OTLP/JSON ExportMetricsServiceRequest. */
// deno-lint-ignore no-explicit-any
function flattenMetrics(request: any): ExportedPoint[] {
  // deno-lint-ignore no-explicit-any
  return (request.resourceMetrics ?? []).flatMap((resource: any) =>
    // deno-lint-ignore no-explicit-any
    (resource.scopeMetrics ?? []).flatMap((scope: any) =>
      // deno-lint-ignore no-explicit-any
      (scope.metrics ?? []).flatMap((metric: any) => {
        const type = ["histogram", "sum", "gauge"].find((key) => key in metric) ?? "other";
        // deno-lint-ignore no-explicit-any
        return (metric[type]?.dataPoints ?? []).map((point: any) => ({
          service: values(resource.resource?.attributes)["service.name"] as string,
          scope: scope.scope?.name,
          name: metric.name,
          unit: metric.unit ?? "",
          type,
          attributes: values(point.attributes),
          count: point.count === undefined ? undefined : Number(point.count),
          sum: point.sum,
          value: point.asDouble ?? (point.asInt === undefined ? undefined : Number(point.asInt)),
        }));
      })
    )
  );
}

/**
 * An OTLP/HTTP JSON receiver on a free port, and the environment that sends
 * a program's spans to it (Deno's OpenTelemetry, `OTEL_DENO=true`).
 */
export function startReceiver() {
  const spans: Exported[] = [];
  const points: ExportedPoint[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const body = await request.text();
    const path = new URL(request.url).pathname;
    if (path === "/v1/traces") spans.push(...flatten(JSON.parse(body)));
    if (path === "/v1/metrics") points.push(...flattenMetrics(JSON.parse(body)));
    return Response.json({}); // an empty Export*ServiceResponse: all accepted
  });
  return {
    spans,
    points,
    env: (service: string): Record<string, string> => ({
      OTEL_DENO: "true",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${server.addr.port}`,
      OTEL_SERVICE_NAME: service,
    }),
    named: (name: string) => spans.filter((span) => span.name === name),
    /** The data points of the metric named `name`. */
    metric: (name: string) => points.filter((point) => point.name === name),
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
