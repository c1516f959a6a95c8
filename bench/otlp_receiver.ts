/**
 * # bench/otlp_receiver.ts: where the tracing measurement's spans go
 *
 * A small OTLP/HTTP receiver for JSON, served in the benchmark's process on
 * 127.0.0.1: it answers every export and counts the spans it is sent, by
 * name, keeping nothing else.
 *
 * @module
 */

/** What the OTLP receiver was sent: POSTs, and the spans of /v1/traces by their name's first word. */
export interface Received {
  posts: number;
  traceExports: number;
  spans: number;
  send: number;
  process: number;
  rejected: number;
}

/** The largest export the receiver reads (Deno sends at most 512 spans, well under 2 MiB). */
const OTLP_MAX_BODY = 32 * 2 ** 20;

/**
 * A local OTLP/HTTP receiver for JSON (what Deno sends with
 * `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) on 127.0.0.1, a port of its own:
 * answers 200 `{}` to every POST (traces, logs, metrics), counts the spans
 * sent to /v1/traces, keeps nothing else; a body over 32 MiB gets 413.
 */
export function otlpReceiver() {
  const received: Received = {
    posts: 0,
    traceExports: 0,
    spans: 0,
    send: 0,
    process: 0,
    rejected: 0,
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    if (request.method !== "POST") return new Response(null, { status: 405 });
    received.posts++;
    const body = await readBody(request);
    if (body === undefined) {
      received.rejected++;
      return new Response(null, { status: 413 });
    }
    if (new URL(request.url).pathname === "/v1/traces") {
      received.traceExports++;
      try {
        countSpans(JSON.parse(body), received);
      } catch {
        received.rejected++;
        return new Response(null, { status: 400 });
      }
    }
    return Response.json({});
  });
  return {
    received,
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
  };
}

/** The request's body as text, gunzipped if need be; undefined past OTLP_MAX_BODY. */
async function readBody(request: Request): Promise<string | undefined> {
  if (Number(request.headers.get("content-length")) > OTLP_MAX_BODY) return undefined;
  let stream = request.body;
  if (!stream) return "";
  if (request.headers.get("content-encoding") === "gzip") {
    stream = stream.pipeThrough(new DecompressionStream("gzip"));
  }
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += chunk.byteLength;
    if (size > OTLP_MAX_BODY) return undefined; // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  return await new Blob(chunks).text();
}

/** Adds the spans of an OTLP/JSON trace export to `received`, by their name's first word. */
function countSpans(body: unknown, received: Received): void {
  type Export = { resourceSpans?: { scopeSpans?: { spans?: { name?: unknown }[] }[] }[] };
  for (const resource of (body as Export).resourceSpans ?? []) {
    for (const scope of resource.scopeSpans ?? []) {
      for (const span of scope.spans ?? []) {
        received.spans++;
        const word = typeof span.name === "string" ? span.name.split(" ")[0] : "";
        if (word === "send" || word === "process") received[word]++;
      }
    }
  }
}
