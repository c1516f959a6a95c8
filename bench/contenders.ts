/**
 * # bench/contenders.ts: the client → server pairs that compete
 *
 * Our pair (both layers of the library) and the raw amqplib pairs of
 * `bench/raw.ts`, each with and without each AMQP feature; their names as
 * the tables print them; connecting them to their servers; and the ratios
 * every pairwise table shows.
 *
 * @module
 */
import { FibonacciRpcClient, RpcClient } from "../rpc/mod.ts";
import type { Lab, Running, ServerKind } from "./lab.ts";
import { rawClient } from "./raw.ts";
import type { Contender, QueueType } from "./settings.ts";
import { ratio, type Spread } from "./stats.ts";

/** A connected client and the servers it talks to. */
export type Pair = Contender & { server: Running };

/** Our pair, its server logging as shipped. */
export const OURS = "ours (server logging as shipped)";
/** Our pair, its server with `--quiet`. */
export const QUIET = "ours, server --quiet";
/** The generic layer's pair. */
export const GENERIC = "ours, generic RpcClient → RpcServer (bytes handler)";
/** The Python pair. */
export const PIKA = "pika loop → interop/peer_server.py";
/** The raw pair with the features ours has, the target's yardstick. */
const SAME = "raw, same features";
/** The raw pair with none of the features, each feature's yardstick. */
const PLAIN = "raw, plain";

/** Our client, every feature on (deadline, expiration, mandatory, confirms where it has them). */
export function connectOurs(lab: Lab, queue: string): Promise<FibonacciRpcClient> {
  return FibonacciRpcClient.connect({ url: lab.settings.url, queue, replyQueue: "exclusive" });
}

/** Our client as a contender. */
export async function ours(lab: Lab, queue: string): Promise<Contender> {
  const client = await connectOurs(lab, queue);
  return { call: (n) => client.call(n), close: () => client.close() };
}

/** The generic layer's client: `n` as text to `queue`, the reply's bytes read back as text. */
async function generic(lab: Lab, queue: string): Promise<Contender> {
  const client = await RpcClient.connect({ url: lab.settings.url, replyQueue: "exclusive" });
  const decoder = new TextDecoder();
  return {
    call: (n) => client.call(queue, String(n)).then((reply) => decoder.decode(reply)),
    close: () => client.close(),
  };
}

/** The raw pair that is ours minus our own code: same features, writes coalesced as ours are. */
export const COALESCED = "raw, same features, writes coalesced";

/** The raw pairs: which features the client uses, and which raw server answers it. */
export const RAW_PAIRS = {
  [SAME]: { confirms: true, properties: true, server: "raw-reply-connection" },
  [COALESCED]: { confirms: true, properties: true, coalesce: true, server: "raw-coalesced" },
  "raw + confirms": { confirms: true, properties: false, server: "raw" },
  "raw + expiration, mandatory, x-deadline": { confirms: false, properties: true, server: "raw" },
  "raw + replies on a 2nd server connection": {
    confirms: false,
    properties: false,
    server: "raw-reply-connection",
  },
  [PLAIN]: { confirms: false, properties: false, server: "raw" },
} as const;

/**
 * Our client against our server (`ours`, logging as shipped, `ours-quiet`,
 * or `generic`: the generic layer's pair), and each raw pair, connected, with
 * the servers they talk to.
 */
export async function contenders(
  lab: Lab,
  type: QueueType,
  kinds: ("ours" | "ours-quiet" | "generic")[],
): Promise<Record<string, Pair>> {
  const result: Record<string, Pair> = {};
  const add = async (
    name: string,
    kind: ServerKind,
    connect: (queue: string) => Promise<Contender>,
  ) => {
    const server = await lab.server({ kind, type });
    result[name] = { ...await connect(server.queue), server };
  };
  const names = { ours: OURS, "ours-quiet": QUIET, generic: GENERIC };
  const client = (kind: "ours" | "ours-quiet" | "generic") => (queue: string) =>
    kind === "generic" ? generic(lab, queue) : ours(lab, queue);
  // Ours right before the raw pair with the same features: in the rotating
  // order of the turns the two run back to back in all turns but one.
  await add(names[kinds[0]], kinds[0], client(kinds[0]));
  for (const [name, { server, ...features }] of Object.entries(RAW_PAIRS)) {
    await add(name, server, (queue) => rawClient({ url: lab.settings.url, queue, ...features }));
    if (name === SAME) {
      for (const kind of kinds.slice(1)) await add(names[kind], kind, client(kind));
    }
  }
  return result;
}

/**
 * The ratios every pairwise table shows, each the median of per-turn ratios:
 * ours against the raw pairs (and the pika pair), and each raw feature
 * against none, which is that feature's price.
 */
export function pairRatios(perTurn: Record<string, number[]>): Record<string, Spread> {
  const over = (a: string, b: string) => ratio(perTurn[a], perTurn[b]);
  const ratios: Record<string, Spread> = {
    [`ours / ${SAME}`]: over(OURS, SAME),
    [`ours / ${PLAIN}`]: over(OURS, PLAIN),
    [`ours / ${COALESCED}`]: over(OURS, COALESCED),
  };
  if (perTurn[QUIET]) ratios[`ours, server --quiet / ${SAME}`] = over(QUIET, SAME);
  if (perTurn[GENERIC]) {
    ratios[`ours, generic / ${SAME}`] = over(GENERIC, SAME);
    ratios["ours, generic / ours"] = over(GENERIC, OURS);
  }
  if (perTurn[PIKA]) ratios["ours / pika pair"] = over(OURS, PIKA);
  ratios[`${COALESCED} / ${SAME}`] = over(COALESCED, SAME);
  for (const name of Object.keys(RAW_PAIRS).filter((name) => name !== PLAIN)) {
    ratios[`${name} / ${PLAIN}`] = over(name, PLAIN);
  }
  return ratios;
}

/** Closes every client of `clients`, one after another. */
export async function closeAll(clients: Record<string, { close(): Promise<void> }>): Promise<void> {
  for (const client of Object.values(clients)) await client.close();
}
