// Makes the PGlite data directory every test PGlite starts from (test/helpers/pglite-server.ts):
// a fresh database with the `vector` extension created, dumped as a tarball. Loading it takes
// about a second where PGlite's initdb takes five to six. Started by test/setup/build-source.ts
// in the background; writes <out>.tar when done (atomically), <out>.error when it failed.
// Usage (from the repository root): node test/setup/pglite-template.cjs <out>
const fs = require('node:fs');
const { PGlite } = require('@electric-sql/pglite');
const { vector } = require('@electric-sql/pglite-pgvector');

const out = process.argv[2];
(async () => {
  const db = await PGlite.create({ extensions: { vector } });
  await db.exec('CREATE EXTENSION IF NOT EXISTS vector');
  const dump = await db.dumpDataDir('none');
  await db.close();
  fs.writeFileSync(`${out}.tmp`, Buffer.from(await dump.arrayBuffer()));
  fs.renameSync(`${out}.tmp`, `${out}.tar`);
})().catch((err) => {
  fs.writeFileSync(`${out}.error`, String(err?.stack || err));
  process.exit(1);
});
