/**
 * TLS fixtures for the tests: a throwaway CA with a server and a client
 * certificate (and a second CA, with a client certificate of its own, that
 * nobody trusts), made with `openssl` in a temporary directory, and a TLS
 * listener that requires a client certificate, terminated by `socat` in
 * front of the test broker. Nothing is left behind: disposing removes the
 * directory and ends socat (by its PID).
 *
 * @module
 */
import { BROKER_URL } from "./_test_util.ts";
import { runCommand, spawnCommand } from "./_test_process.ts";

/** Whether `openssl` and `socat` are installed: the TLS tests need both. */
export async function tlsToolsInstalled(): Promise<boolean> {
  const found = await Promise.all(
    ["openssl", "socat"].map((tool) =>
      runCommand("sh", ["-c", `command -v ${tool}`]).then(({ code }) => code === 0, () => false)
    ),
  );
  return found.every(Boolean);
}

/** Runs openssl in `dir`; throws with its output if it fails. */
async function openssl(dir: string, args: string[]): Promise<void> {
  const { code, stderr } = await runCommand("openssl", args.map((arg) => arg.replace("@", dir)));
  if (code !== 0) throw new Error(`openssl ${args.join(" ")}: ${stderr}`);
}

/** A CA (`name.pem`, `name.key`) valid for two days. */
async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(dir, [
    ...["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"],
    ...["-keyout", `@/${name}.key`, "-out", `@/${name}.pem`, "-subj", `/CN=${name}`],
  ]);
}

/** A certificate `name.pem` with key `name.key`, signed by CA `ca`, with these X.509 extensions. */
async function makeCertificate(dir: string, name: string, ca: string, extensions: string) {
  await Deno.writeTextFile(`${dir}/${name}.ext`, extensions);
  await openssl(dir, [
    ...["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `@/${name}.key`],
    ...["-out", `@/${name}.csr`, "-subj", `/CN=${name}`],
  ]);
  await openssl(dir, [
    ...["x509", "-req", "-in", `@/${name}.csr`, "-days", "2", "-CA", `@/${ca}.pem`],
    ...["-CAkey", `@/${ca}.key`, "-CAcreateserial", "-out", `@/${name}.pem`],
    ...["-extfile", `@/${name}.ext`],
  ]);
}

/** The certificates the tests make. */
type PemName = "ca" | "server" | "client" | "clientEncrypted" | "rogueCa" | "rogue";

/** The passphrase of `clientEncrypted.key`: the client's key, encrypted. */
export const KEY_PASSPHRASE = "test-passphrase";

/** The PEM files the tests use, by name, and their text. */
export interface Certificates {
  dir: string;
  /** `ca`, `server`, `client` (signed by ca), `rogueCa`, `rogue` (a client signed by rogueCa). */
  file: (name: PemName, part?: "pem" | "key") => string;
  text: (name: PemName, part?: "pem" | "key") => string;
}

/** Makes the CAs and certificates in a fresh temporary directory; disposing removes it. */
export async function makeCertificates(): Promise<Certificates & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "rpc_test_tls_" });
  await Promise.all([makeCa(dir, "ca"), makeCa(dir, "rogueCa")]);
  // The server's certificate names localhost and 127.0.0.1, and nothing else.
  await makeCertificate(
    dir,
    "server",
    "ca",
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
  );
  await makeCertificate(dir, "client", "ca", "extendedKeyUsage=clientAuth\n");
  await openssl(dir, [
    ...["pkey", "-in", "@/client.key", "-aes256", "-passout", `pass:${KEY_PASSPHRASE}`],
    ...["-out", "@/clientEncrypted.key"],
  ]);
  await makeCertificate(dir, "rogue", "rogueCa", "extendedKeyUsage=clientAuth\n");
  const file = (name: string, part = "pem") => `${dir}/${name}.${part}`;
  return {
    dir,
    file,
    text: (name, part) => Deno.readTextFileSync(file(name, part)),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A free loopback port (the listener that found it is closed again). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * A TLS listener on a free loopback port that requires a client
 * certificate signed by the test CA (`verify=1`) and forwards to the test
 * broker's AMQP port: `socat`, ended by its PID on disposal.
 */
export async function startTlsListener(certificates: Certificates) {
  const port = freePort();
  const broker = new URL(BROKER_URL);
  const socat = spawnCommand("socat", [
    `OPENSSL-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,verify=1,` +
    `cert=${certificates.file("server")},key=${certificates.file("server", "key")},` +
    `cafile=${certificates.file("ca")}`,
    `TCP:${broker.hostname === "localhost" ? "127.0.0.1" : broker.hostname}:${broker.port || 5672}`,
  ], { disposeSignal: "SIGTERM" });
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch (error) {
      if (Date.now() > deadline || socat.exited) {
        await socat.stop();
        throw new Error(`socat did not listen on ${port}: ${socat.stderr}`, { cause: error });
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    port,
    /** The listener's URL with `host` (default localhost) and, if any, `query`. */
    url: (host = "localhost", query = "") => `amqps://${host}:${port}${query}`,
    [Symbol.asyncDispose]: () => socat[Symbol.asyncDispose](),
  };
}
