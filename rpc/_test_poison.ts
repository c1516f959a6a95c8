/**
 * A request no AMQP client library will send: its headers are a table
 * nested thousands deep, which amqplib's recursive decoder cannot read
 * (the stack overflows), so whatever connection receives it dies. Written
 * for the crash-loop tests: the AMQP 0-9-1 frames are put together by hand
 * and written to a raw TCP socket, since client libraries refuse (or
 * overflow) encoding such a table.
 *
 * @module
 */
import { Buffer } from "node:buffer";

/** Tables nested this deep overflow amqplib's decoder (7 bytes each: about 100 KiB). */
export const POISON_DEPTH = 15_000;

const FRAME_METHOD = 1;
const FRAME_HEADER = 2;
const FRAME_BODY = 3;
const FRAME_END = 0xce;

const shortString = (text: string) => {
  const bytes = Buffer.from(text);
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
};
const longString = (bytes: Buffer) => Buffer.concat([uint32(bytes.length), bytes]);
const uint16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const uint32 = (n: number) => {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(n);
  return buffer;
};

function frame(type: number, channel: number, payload: Buffer): Buffer {
  return Buffer.concat([
    Buffer.from([type]),
    uint16(channel),
    uint32(payload.length),
    payload,
    Buffer.from([FRAME_END]),
  ]);
}

const method = (channel: number, classId: number, methodId: number, ...args: Buffer[]) =>
  frame(FRAME_METHOD, channel, Buffer.concat([uint16(classId), uint16(methodId), ...args]));

/** A field table `{ a: { a: { ... { a: {} } } } }`, `depth` tables deep, with its length. */
export function nestedTable(depth: number): Buffer {
  // Built from the inside out: each level is key "a", type 'F', then the inner table.
  let table = uint32(0);
  for (let level = 1; level < depth; level++) {
    const entry = Buffer.concat([Buffer.from([1, 0x61, 0x46]), table]); // "a", 'F', the table
    table = Buffer.concat([uint32(entry.length), entry]);
  }
  return table;
}

/** Reads frames from the socket; `next(classId, methodId)` waits for that method. */
class FrameReader {
  #pending = Buffer.alloc(0);
  constructor(readonly connection: Deno.Conn) {}

  async next(classId: number, methodId: number): Promise<void> {
    for (;;) {
      if (this.#pending.length >= 7) {
        const size = this.#pending.readUInt32BE(3);
        if (this.#pending.length >= size + 8) {
          const [type, payload] = [this.#pending[0], this.#pending.subarray(7, 7 + size)];
          this.#pending = this.#pending.subarray(size + 8);
          if (type !== FRAME_METHOD) continue;
          const [got, gotMethod] = [payload.readUInt16BE(0), payload.readUInt16BE(2)];
          if (got === classId && gotMethod === methodId) return;
          throw new Error(`expected method ${classId}.${methodId}, got ${got}.${gotMethod}`);
        }
      }
      const chunk = new Uint8Array(65536);
      const n = await this.connection.read(chunk);
      if (n === null) throw new Error("the broker closed the connection");
      this.#pending = Buffer.concat([this.#pending, chunk.subarray(0, n)]);
    }
  }
}

/**
 * Publishes, to `queue` on the broker at `host:port` (user guest, vhost
 * `/`), a request whose headers nest `depth` tables deep, with `replyTo`,
 * a correlation id and body `"5"`, and waits for the broker's confirm.
 */
export async function publishPoison(
  queue: string,
  { host = "127.0.0.1", port = 5672, depth = POISON_DEPTH, replyTo = "amq.gen-poison" } = {},
): Promise<void> {
  const connection = await Deno.connect({ hostname: host, port });
  const frames = new FrameReader(connection);
  const send = (bytes: Buffer) => connection.write(bytes);
  try {
    await send(Buffer.from("AMQP\x00\x00\x09\x01", "latin1"));
    await frames.next(10, 10); // Connection.Start
    const plain = Buffer.from("\0guest\0guest");
    await send(
      method(0, 10, 11, uint32(0), shortString("PLAIN"), longString(plain), shortString("en_US")),
    );
    await frames.next(10, 30); // Connection.Tune
    await send(method(0, 10, 31, uint16(16), uint32(131072), uint16(0))); // 16 channels at most, no heartbeat
    await send(method(0, 10, 40, shortString("/"), shortString(""), Buffer.from([0])));
    await frames.next(10, 41); // Connection.OpenOk
    await send(method(1, 20, 10, shortString("")));
    await frames.next(20, 11); // Channel.OpenOk
    await send(method(1, 85, 10, Buffer.from([0]))); // Confirm.Select
    await frames.next(85, 11);
    const body = Buffer.from("5");
    await send(method(1, 60, 40, uint16(0), shortString(""), shortString(queue), Buffer.from([0])));
    // Property flags: headers (bit 13), correlation-id (bit 10), reply-to (bit 9).
    const flags = (1 << 13) | (1 << 10) | (1 << 9);
    const size = Buffer.alloc(8);
    size.writeBigUInt64BE(BigInt(body.length));
    await send(frame(
      FRAME_HEADER,
      1,
      Buffer.concat([
        uint16(60),
        uint16(0),
        size,
        uint16(flags),
        nestedTable(depth),
        shortString(`poison-${crypto.randomUUID()}`),
        shortString(replyTo),
      ]),
    ));
    await send(frame(FRAME_BODY, 1, body));
    await frames.next(60, 80); // Basic.Ack: the queue has it
    await send(method(0, 10, 50, uint16(200), shortString("bye"), uint16(0), uint16(0)));
    await frames.next(10, 51);
  } finally {
    connection.close();
  }
}
