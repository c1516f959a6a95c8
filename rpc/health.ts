/**
 * Health, for container orchestrators: {@linkcode serveHealth} answers
 * `GET /healthz` with 200 while a server consumes its queue and 503 while
 * it reconnects or closes, from its {@linkcode ServerHealth}.
 *
 * The endpoint listens on loopback (`127.0.0.1`) unless told otherwise: a
 * probe from another host or container (Kubernetes' kubelet probes the
 * pod's IP) needs `hostname: "0.0.0.0"`. It says nothing secret, only the
 * three booleans, but it is no business of the outside world.
 *
 * @module
 */

/**
 * What `server.health()` says. A server that is consuming is healthy.
 *
 * @example
 * ```ts
 * const health: ServerHealth = { connected: true, consuming: true, closing: false };
 * ```
 */
export interface ServerHealth {
  /** It has a live channel to the broker (false while reconnecting). */
  readonly connected: boolean;
  /** Its consumer takes requests from the queue: connected, and not closing. */
  readonly consuming: boolean;
  /** `close()` was called: it finishes what it holds, and takes no more. */
  readonly closing: boolean;
}

/** Options of {@linkcode serveHealth}. */
export interface HealthOptions {
  /** The TCP port; 0 picks a free one (see `port` of the result). */
  port: number;
  /**
   * The address to listen on.
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
}

/** A running health endpoint, from {@linkcode serveHealth}. */
export interface HealthEndpoint extends AsyncDisposable {
  /** The port it listens on. */
  readonly port: number;
  /** Stops listening. */
  close(): Promise<void>;
}

/** The path it answers. */
export const HEALTH_PATH = "/healthz";

/**
 * Serves `GET /healthz` (and `HEAD`) for `server`: 200 and
 * `{"status":"ok",...}` while it consumes, 503 and `{"status":"unavailable",...}`
 * otherwise, with the three booleans of {@linkcode ServerHealth}. Other
 * paths get 404, other methods 405.
 *
 * @example
 * ```ts
 * import { RpcServer, serveHealth } from "./mod.ts";
 *
 * await using server = await RpcServer.start({ queue: "echo", handler: (request) => request });
 * await using health = serveHealth(server, { port: 8080 });
 * // curl http://127.0.0.1:8080/healthz
 * ```
 */
export function serveHealth(
  server: { health(): ServerHealth },
  options: HealthOptions,
): HealthEndpoint {
  const listener = Deno.serve({
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port,
    onListen() {}, // quiet: the program says what it listens on
  }, (request) => {
    if (new URL(request.url).pathname !== HEALTH_PATH) {
      return new Response("not found\n", { status: 404 });
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    const health = server.health();
    const status = health.consuming ? "ok" : "unavailable";
    return Response.json({ status, ...health }, {
      status: health.consuming ? 200 : 503,
      headers: { "cache-control": "no-store" },
    });
  });
  let closing: Promise<void> | undefined;
  const close = () => closing ??= listener.shutdown();
  return { port: listener.addr.port, close, [Symbol.asyncDispose]: close };
}
