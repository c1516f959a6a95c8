/**
 * A test fixture of the lesson's tests (rpc_test.ts, workshop_test.ts): a
 * program in the background, its output collected as it comes.
 *
 * @module
 */

/** The broker the lesson's tests use: `$AMQP_URL`, else amqp://localhost. */
export const BROKER = Deno.env.get("AMQP_URL") ?? "amqp://localhost";

/**
 * Starts `command` with `args` in `cwd`, with `$AMQP_URL` set to
 * {@linkcode BROKER} unless `env` says otherwise; disposing it kills it by
 * its PID.
 */
export function spawn(
  command: string,
  args: string[],
  env: Record<string, string>,
  cwd: string,
) {
  const child = new Deno.Command(command, {
    args,
    cwd,
    env: { AMQP_URL: BROKER, NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = { stdout: "", stderr: "" };
  const collect = (key: keyof typeof output) => {
    const decoder = new TextDecoder();
    return new WritableStream<Uint8Array>({
      write: (chunk) => void (output[key] += decoder.decode(chunk, { stream: true })),
    });
  };
  const reading = Promise.all([
    child.stdout.pipeTo(collect("stdout")),
    child.stderr.pipeTo(collect("stderr")),
  ]);
  let exited = false;
  const status = child.status.then(async (status) => {
    exited = true;
    await reading;
    return status;
  });
  return {
    child,
    status,
    get exited() {
      return exited;
    },
    get stdout() {
      return output.stdout;
    },
    get stderr() {
      return output.stderr;
    },
    async [Symbol.asyncDispose]() {
      if (!exited) child.kill("SIGKILL");
      await status;
    },
  };
}
