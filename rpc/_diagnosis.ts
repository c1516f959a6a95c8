/**
 * Why a call timed out: one look at the request queue, shared by every
 * call that times out within a second of it.
 *
 * @module
 */
import type { Channel } from "npm:amqplib@2.3.1";
import { ignoreError, within } from "./_connection.ts";
import type { NoReplyDiagnosis } from "./errors.ts";

/** How long one look at a queue serves the timeouts that follow it, in ms. */
const DIAGNOSIS_REUSE_MS = 1_000;
/** How long a look may take, in ms: a timed-out call waits this long at most for it. */
const LOOKUP_TIMEOUT_MS = 500;

/** What a look at a queue finds, if the queue exists. */
export interface QueueState {
  /** Servers consuming the queue now. */
  consumers: number;
  /** Messages ready in it, not yet taken by any server. */
  queued: number;
}

/**
 * Looks at request queues, on a channel of its own each time (asking about
 * a missing queue closes the channel that asks).
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 *
 * const connection = await amqp.connect("amqp://localhost");
 * const inspector = new QueueInspector(() => connection.createChannel());
 * await inspector.diagnose("rpc_queue"); // { cause: "no-server", consumers: 0, queued: 3 }
 * ```
 */
export class QueueInspector {
  readonly #openChannel: () => Promise<Channel>;
  readonly #recent = new Map<string, { at: number; finding: Promise<NoReplyDiagnosis> }>();

  /** `openChannel` opens a channel on the current connection, or throws if there is none. */
  constructor(openChannel: () => Promise<Channel>) {
    this.#openChannel = openChannel;
  }

  /**
   * Why no reply came from `queue`. One look serves every call that times
   * out within a second of it, so that 10,000 calls timing out together
   * cost one round trip, not 10,000.
   */
  diagnose(queue: string): Promise<NoReplyDiagnosis> {
    const now = Date.now();
    const recent = this.#recent.get(queue);
    if (recent && now - recent.at < DIAGNOSIS_REUSE_MS) return recent.finding;
    const lookUp = within(
      this.lookUp(queue),
      LOOKUP_TIMEOUT_MS,
      "the broker did not answer in time",
    );
    const finding = lookUp.then(
      (state): NoReplyDiagnosis =>
        state === undefined
          ? { cause: "no-queue" }
          : { cause: state.consumers === 0 ? "no-server" : "no-answer", ...state },
      (error): NoReplyDiagnosis => ({ cause: "unknown", detail: (error as Error).message }),
    );
    for (const [name, { at }] of this.#recent) {
      if (now - at >= DIAGNOSIS_REUSE_MS) this.#recent.delete(name); // keep the map small
    }
    this.#recent.set(queue, { at: now, finding });
    return finding;
  }

  /** How many servers consume `queue` and how many requests wait in it; undefined if it does not exist. */
  async lookUp(queue: string): Promise<QueueState | undefined> {
    const channel = await this.#openChannel();
    channel.on("error", ignoreError);
    try {
      const { consumerCount, messageCount } = await channel.checkQueue(queue);
      return { consumers: consumerCount, queued: messageCount };
    } catch (error) {
      if ((error as { code?: number }).code === 404) return undefined;
      throw error;
    } finally {
      await channel.close().catch(ignoreError);
    }
  }
}
