/**
 * Tests of TLS: a listener of the test's own (socat, with certificates the
 * test makes with openssl) that requires a client certificate, in front of
 * the test broker. Mutual TLS works for the library and the command lines;
 * a missing client certificate, an unknown CA, a wrong server name and a
 * client certificate from an unknown CA each fail in one line that names
 * the TLS problem and what to pass; TLS settings that do not fit are
 * usage errors.
 *
 * Run: `deno test -A rpc/tls_test.ts` (needs `openssl` and `socat`).
 *
 * @module
 */
import assert from "node:assert/strict";
import { loginUser } from "./_urls.ts";
import { RpcClient, RpcServer, type TlsOptions } from "./mod.ts";
import { FIB_CLIENT, FIB_SERVER, programName, run, spawn } from "./_test_process.ts";
import {
  KEY_PASSPHRASE,
  makeCertificates,
  startTlsListener,
  tlsToolsInstalled,
} from "./_test_tls.ts";
import { openBroker, quiet, waitFor } from "./_test_util.ts";

const ignore = !(await tlsToolsInstalled());
if (ignore) {
  console.log("rpc/tls_test.ts: skipped: needs openssl and socat (apt-get install -y socat)");
}

/** The certificates and the TLS listener, made once for this file; removed and ended at unload. */
const fixtures = ignore ? undefined : await (async () => {
  const certificates = await makeCertificates();
  const listener = await startTlsListener(certificates);
  globalThis.addEventListener("unload", () => {
    listener[Symbol.asyncDispose]();
    Deno.removeSync(certificates.dir, { recursive: true });
  });
  return { certificates, listener };
})();

/** The fixtures, in a test that runs only when they exist. */
const tls = () => fixtures!;

/** The client side of mutual TLS: the test CA, and a client certificate it signed. */
const mutual = (): TlsOptions => {
  const { text } = tls().certificates;
  return { ca: text("ca"), cert: text("client"), key: text("client", "key") };
};

const upper = (request: Uint8Array) => new TextDecoder().decode(request).toUpperCase();

Deno.test({
  name:
    "a call over mutual TLS succeeds: the server's two connections and the client's all present a certificate",
  ignore,
  async fn() {
    await using broker = await openBroker();
    const url = tls().listener.url();
    // The listener refuses connections without a certificate: every connection that is up has one.
    await using _server = await RpcServer.start({
      url,
      tls: mutual(),
      queue: broker.queue,
      handler: upper,
      ...quiet,
    });
    await using client = await RpcClient.connect({ url, tls: mutual() });
    const reply = await client.call(broker.queue, "over tls", { timeout: 10_000 });
    assert.equal(new TextDecoder().decode(reply), "OVER TLS");
  },
});

Deno.test({
  name:
    "without a client certificate, with an unknown CA, or for another name, connecting fails in one line naming the TLS problem and what to pass",
  ignore,
  async fn() {
    const { text } = tls().certificates;
    const where = `TLS with ${tls().listener.url()} failed`;
    const cases: Array<[string, TlsOptions, RegExp]> = [
      [
        "no client certificate",
        { ca: text("ca") },
        new RegExp(
          `^${where}: the broker requires a client certificate ` +
            `\\(pass --cert FILE --key FILE, or tls\\.cert and tls\\.key\\)$`,
        ),
      ],
      [
        "an unknown CA",
        { ...mutual(), ca: text("rogueCa") },
        new RegExp(
          `^${where}: the broker's certificate is not signed by a CA we trust \\([^)]+\\); ` +
            `pass the CA that signed it \\(--cacert FILE, or tls\\.ca\\)$`,
        ),
      ],
      [
        "a wrong server name",
        { ...mutual(), servername: "wrong.example" },
        new RegExp(
          `^${where}: the broker's certificate is for another name ` +
            `\\(it names DNS:localhost, IP Address:127\\.0\\.0\\.1\\); ` +
            `connect to a name it holds \\(or set tls\\.servername\\)$`,
        ),
      ],
      [
        "a client certificate from a CA the listener does not trust",
        { ca: text("ca"), cert: text("rogue"), key: text("rogue", "key") },
        new RegExp(`^${where}: the broker refused our client certificate \\([^)]+\\); pass one`),
      ],
    ];
    const url = tls().listener.url();
    for (const [what, options, message] of cases) {
      await assert.rejects(RpcClient.connect({ url, tls: options }), { message }, what);
      await assert.rejects(
        RpcServer.start({ url, tls: options, queue: "unused", handler: upper, ...quiet }),
        { message },
        what,
      );
    }
  },
});

Deno.test({
  name:
    "the command lines make a call over mutual TLS with --cacert, --cert and --key, or AMQP_CACERT, AMQP_CERT and AMQP_KEY",
  ignore,
  async fn() {
    await using broker = await openBroker();
    const { file } = tls().certificates;
    const url = tls().listener.url();
    const flags = [
      "--cacert",
      file("ca"),
      "--cert",
      file("client"),
      "--key",
      file("client", "key"),
    ];
    await using server = spawn(FIB_SERVER, ["--url", url, "--queue", broker.queue, ...flags]);
    await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
    const environment = {
      AMQP_CACERT: file("ca"),
      AMQP_CERT: file("client"),
      AMQP_KEY: file("client", "key"),
    };
    const [withFlags, withEnvironment] = await Promise.all([
      run(FIB_CLIENT, ["--url", url, "--queue", broker.queue, ...flags, "30"]),
      run(FIB_CLIENT, ["--url", url, "--queue", broker.queue, "10"], 20_000, environment),
    ]);
    assert.equal(withFlags.stdout, " [x] Requesting fib(30)\n [.] Got 832040\n", withFlags.stderr);
    assert.equal(withFlags.code, 0);
    assert.equal(withEnvironment.stdout, " [x] Requesting fib(10)\n [.] Got 55\n");
    assert.equal(withEnvironment.code, 0, withEnvironment.stderr);
  },
});

Deno.test({
  name:
    "the command lines say in one line what is wrong with TLS: exit 1 for the broker's refusal, 2 for TLS flags that do not fit",
  ignore,
  async fn() {
    const { file, dir } = tls().certificates;
    const url = tls().listener.url();
    const cases: Array<[string[], number, string]> = [
      [
        ["--url", url, "--cacert", file("ca")],
        1,
        `TLS with ${url} failed: the broker requires a client certificate ` +
        `(pass --cert FILE --key FILE, or tls.cert and tls.key)`,
      ],
      [
        ["--url", url, "--cacert", file("ca"), "--cert", file("client")],
        2,
        "--cert needs --key too: a client certificate goes with its key (see --help)",
      ],
      [
        ["--url", url, "--cacert", `${dir}/missing.pem`],
        2,
        `cannot read --cacert "${dir}/missing.pem": no such file (see --help)`,
      ],
      [
        ["--url", url, "--cacert", file("ca", "key").replace(/ca\.key$/, "server.ext")],
        2,
        `--cacert "${dir}/server.ext" holds no PEM text (-----BEGIN ...) (see --help)`,
      ],
      [
        ["--url", "amqp://guest:hunter2@localhost", "--cacert", file("ca")],
        2,
        '--cacert needs amqps:// URLs, got "amqp://guest:***@localhost" (see --help)',
      ],
    ];
    const outputs = await Promise.all(
      [FIB_CLIENT, FIB_SERVER].flatMap((script) =>
        cases.map(([args]) => run(script, script === FIB_CLIENT ? [...args, "5"] : args))
      ),
    );
    for (const [i, script] of [FIB_CLIENT, FIB_SERVER].entries()) {
      for (const [j, [args, code, message]] of cases.entries()) {
        const output = outputs[i * cases.length + j];
        assert.equal(output.stderr, `${programName(script)}: ${message}\n`, args.join(" "));
        assert.equal(output.code, code, args.join(" "));
      }
    }
  },
});

Deno.test({
  name: "TLS settings that do not fit the URL or each other are TypeErrors in the library",
  ignore,
  async fn() {
    const { text } = tls().certificates;
    const cases: Array<[string, TlsOptions, string]> = [
      ["amqp://localhost", { ca: text("ca") }, "tls needs amqps:// URLs, got one with amqp://"],
      [
        tls().listener.url(),
        { ca: text("ca"), cert: text("client") },
        "tls.cert and tls.key go together: give both or neither",
      ],
      [
        tls().listener.url(),
        { ca: "ca.pem" },
        "tls.ca must be PEM text (-----BEGIN ...), not a file name",
      ],
    ];
    for (const [url, options, message] of cases) {
      await assert.rejects(RpcClient.connect({ url, tls: options }), {
        name: "TypeError",
        message,
      });
    }
  },
});

Deno.test({
  name:
    "asking for SASL EXTERNAL where the broker does not offer it fails in one line saying what the broker needs",
  ignore,
  async fn() {
    const url = tls().listener.url("localhost", "?auth_mechanism=external");
    await assert.rejects(RpcClient.connect({ url, tls: mutual() }), {
      message: `cannot log in to ${url} with the client certificate: the broker does not offer ` +
        "SASL EXTERNAL (it needs the rabbitmq_auth_mechanism_ssl plugin, and its own TLS " +
        "listener with the client's CA)",
    });
    await assert.rejects(
      RpcClient.connect({ url: ["amqps://a?auth_mechanism=external", "amqps://b"], tls: mutual() }),
      { name: "TypeError", message: "auth_mechanism must be the same on every broker URL" },
    );
  },
});

Deno.test({
  name:
    "an encrypted key works with its passphrase; a wrong or missing passphrase, or a key of another certificate, fails in one line before connecting",
  ignore,
  async fn() {
    const { text, file } = tls().certificates;
    const url = tls().listener.url();
    const encrypted = { ca: text("ca"), cert: text("client"), key: text("clientEncrypted", "key") };
    await using client = await RpcClient.connect({
      url,
      tls: { ...encrypted, passphrase: KEY_PASSPHRASE },
    });
    assert.ok(client.connectionName);
    const cases: Array<[TlsOptions, string]> = [
      [
        { ...encrypted, passphrase: "wrong" },
        "tls.key cannot be decrypted with tls.passphrase (a wrong passphrase?)",
      ],
      [encrypted, "tls.key is encrypted: give its passphrase (tls.passphrase)"],
      [
        { ...mutual(), key: text("rogue", "key") },
        "tls.cert and tls.key do not belong together: the key is not the certificate's",
      ],
    ];
    for (const [options, message] of cases) {
      await assert.rejects(RpcClient.connect({ url, tls: options }), {
        name: "TypeError",
        message,
      });
    }
    await using broker = await openBroker();
    await using _server = await RpcServer.start({
      url,
      tls: mutual(),
      queue: broker.queue,
      handler: upper,
      ...quiet,
    });
    const flags = ["--url", url, "--queue", broker.queue, "--cacert", file("ca")];
    const key = ["--cert", file("client"), "--key", file("clientEncrypted", "key")];
    const [right, wrong] = await Promise.all([
      run(FIB_CLIENT, [...flags, ...key, "7"], 20_000, { AMQP_KEY_PASSPHRASE: KEY_PASSPHRASE }),
      run(FIB_CLIENT, [...flags, ...key, "7"], 20_000, { AMQP_KEY_PASSPHRASE: "wrong" }),
    ]);
    assert.equal(right.stdout, " [x] Requesting fib(7)\n [.] Got 7\n", right.stderr);
    assert.equal(wrong.code, 2);
    assert.equal(
      wrong.stderr,
      "fib_client: --key cannot be decrypted with AMQP_KEY_PASSPHRASE (a wrong passphrase?) " +
        "(see --help)\n",
    );
  },
});

/**
 * A broker that offers SASL EXTERNAL on its own TLS listener, named by
 * `RPC_TEST_EXTERNAL_URL` (with `RPC_TEST_EXTERNAL_CACERT`, `..._CERT`,
 * `..._KEY` naming the PEM files, the certificate's CN a user of that broker): the
 * shared test broker has no TLS listener, so this runs only where one is set up.
 */
const externalUrl = Deno.env.get("RPC_TEST_EXTERNAL_URL");
if (!externalUrl) {
  console.log(
    "rpc/tls_test.ts: SASL EXTERNAL against a broker skipped: set RPC_TEST_EXTERNAL_URL " +
      "(amqps://host:port of a listener with rabbitmq_auth_mechanism_ssl) and " +
      "RPC_TEST_EXTERNAL_CACERT, _CERT and _KEY",
  );
}

Deno.test({
  name:
    "with auth_mechanism=external the client certificate is the login: the URL's password is not even looked at",
  ignore: !externalUrl,
  async fn() {
    const read = (part: string) =>
      Deno.readTextFileSync(Deno.env.get(`RPC_TEST_EXTERNAL_${part}`)!);
    const tls = { ca: read("CACERT"), cert: read("CERT"), key: read("KEY") };
    const url = new URL(externalUrl!);
    [url.username, url.password] = ["nobody", "wrong-password"];
    await assert.rejects(RpcClient.connect({ url: url.href, tls }), /access refused/);
    url.searchParams.set("auth_mechanism", "external");
    const queue = `rpc_test.${crypto.randomUUID()}`;
    await using _server = await RpcServer.start({
      url: url.href,
      tls,
      queue,
      queueType: "classic",
      handler: upper,
      ...quiet,
    });
    await using client = await RpcClient.connect({ url: url.href, tls });
    const reply = await client.call(queue, "external", { timeout: 10_000 });
    assert.equal(new TextDecoder().decode(reply), "EXTERNAL");
    // The command line too: our server echoes "5" in capitals, which is "5".
    const files = ["CACERT", "CERT", "KEY"].map((part) =>
      Deno.env.get(`RPC_TEST_EXTERNAL_${part}`)!
    );
    const cli = await run(FIB_CLIENT, [
      ...["--url", url.href, "--queue", queue, "5"],
      ...["--cacert", files[0], "--cert", files[1], "--key", files[2]],
    ]);
    assert.equal(cli.stdout, " [x] Requesting fib(5)\n [.] Got 5\n", cli.stderr);
  },
});

Deno.test("under SASL EXTERNAL no user_id is sent, whatever user the URL names: only the broker knows the login", () => {
  assert.equal(loginUser([new URL("amqps://app:pw@broker?auth_mechanism=EXTERNAL")]), undefined);
  assert.equal(loginUser([new URL("amqps://app:pw@broker?auth_mechanism=plain")]), "app");
  assert.equal(loginUser([new URL("amqp://localhost")]), "guest");
});
