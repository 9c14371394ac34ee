// Writes www/schema.json, the protobuf types the page uses (the envelope and the display protocol),
// from the repository's .proto files, and copies protobufjs's light runtime into www/vendor/.
// `node gen.mjs --check` fails when either committed file differs from what it would write
// (CI runs it after `npm ci`). The page itself needs no build: it loads both files as they are.
import { readFileSync, writeFileSync, copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const www = join(here, "www"); // the web root the server serves
const protoDir = join(here, "..", "..", "proto");
const pkgDir = dirname(createRequire(import.meta.url).resolve("protobufjs/package.json"));

const root = new protobuf.Root();
root.resolvePath = (_origin, target) =>
  target.startsWith("google/") ? join(pkgDir, target) : join(protoDir, target);
root.loadSync(["peerwire/v1/envelope.proto", "display/v1/display.proto"]);
root.resolveAll();

// Messages and enums only: the page names methods and topics itself, and the services carry
// peerwire's custom options, which the light runtime has no use for.
function typesOnly(ns) {
  const out = {};
  for (const [name, obj] of Object.entries(ns.nested ?? {})) {
    if (obj instanceof protobuf.Type || obj instanceof protobuf.Enum) out[name] = obj.toJSON();
  }
  return { nested: out };
}
const schema = {
  nested: {
    peerwire: { nested: { v1: typesOnly(root.lookup("peerwire.v1")) } },
    display: { nested: { v1: typesOnly(root.lookup("display.v1")) } },
  },
};
const outputs = [
  [join(www, "schema.json"), JSON.stringify(schema, null, 1) + "\n"],
  [join(www, "vendor", "protobuf.min.js"), readFileSync(join(pkgDir, "dist", "light", "protobuf.min.js"), "utf8")],
  [join(www, "vendor", "protobufjs-LICENSE.txt"), readFileSync(join(pkgDir, "LICENSE"), "utf8")],
];

if (process.argv.includes("--check")) {
  let stale = 0;
  for (const [path, text] of outputs) {
    let have = "";
    try { have = readFileSync(path, "utf8"); } catch { /* missing: stale */ }
    if (have !== text) { console.error(`stale: ${path} (run: npm run gen)`); stale++; }
  }
  if (stale) process.exit(1);
  console.log(`up to date: ${outputs.length} files`);
} else {
  mkdirSync(join(www, "vendor"), { recursive: true });
  for (const [path, text] of outputs) writeFileSync(path, text);
  console.log(`wrote ${outputs.map(([p]) => p).join(", ")}`);
}
