// The graphile-worker side of scripts/bench-vs-graphile: N no-op jobs drained
// by ONE in-process worker pool, timed from the worker's start until the job
// table is empty (every completion committed). Enqueue is not timed.
// Prints one JSON line on stdout; progress goes to stderr.
//
// Run it through scripts/bench-graphile, which installs graphile-worker into a
// cache dir outside the repo and passes it here:
//   SKEIN_BENCH_GRAPHILE_DIR=<dir with node_modules> \
//   node scripts/bench-graphile.mjs <database url> [jobs]
// Knobs (env): GRAPHILE_CONCURRENCY (24), GRAPHILE_LOCAL_QUEUE (500),
// GRAPHILE_POOL (concurrency + 2, the pool size graphile-worker recommends).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";
import { EventEmitter } from "node:events";

const dir = process.env.SKEIN_BENCH_GRAPHILE_DIR;
const url = process.argv[2];
const jobs = Number(process.argv[3] ?? 50000);
if (!dir || !url || !Number.isInteger(jobs) || jobs < 1) {
  console.error("usage: SKEIN_BENCH_GRAPHILE_DIR=dir node bench-graphile.mjs <database url> [jobs]");
  process.exit(2);
}
const concurrency = Number(process.env.GRAPHILE_CONCURRENCY ?? 24);
const localQueueSize = Number(process.env.GRAPHILE_LOCAL_QUEUE ?? 500);
const poolSize = Number(process.env.GRAPHILE_POOL ?? Math.max(10, concurrency + 2));

// The packages live in the cache dir, not beside this file: resolve from there.
const require = createRequire(join(dir, "package.json"));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const gwPath = require.resolve("graphile-worker");
const version = JSON.parse(readFileSync(join(dirname(gwPath), "..", "package.json"), "utf8")).version;
const { run, runMigrations, Logger } = await load("graphile-worker");
const pg = (await load("pg")).default;

const say = (m) => console.error(`bench-graphile: ${m}`);
// graphile-worker logs every completed job at info; keep only warnings and errors.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
});

const client = new pg.Client({ connectionString: url });
await client.connect();
say("resetting schema graphile_worker");
await client.query("drop schema if exists graphile_worker cascade");
await runMigrations({ connectionString: url, logger });

say(`enqueueing ${jobs} no-op jobs`);
const batch = 10000;
for (let done = 0; done < jobs; done += batch) {
  const n = Math.min(batch, jobs - done);
  await client.query(
    `select count(*) from graphile_worker.add_jobs(array(
       select row('noop', '{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec
       from generate_series(1, $1::int)))`,
    [n],
  );
}
await client.query("analyze graphile_worker._private_jobs");
const queued = Number((await client.query("select count(*) from graphile_worker.jobs")).rows[0].count);
if (queued !== jobs) throw new Error(`enqueued ${queued} jobs, expected ${jobs}`);

let completed = 0;
let failed = 0;
let allCompleted;
const allCompletedP = new Promise((resolve) => (allCompleted = resolve));

// Our own emitter, listened to before the worker starts: no early event is missed.
const events = new EventEmitter();
events.on("job:success", () => {
  if (++completed === jobs) allCompleted();
});
events.on("job:failed", () => failed++);

say(`running: concurrency ${concurrency}, localQueue.size ${localQueueSize}, pool ${poolSize}`);
const began = process.hrtime.bigint();
const runner = await run({
  taskList: { noop: async () => {} },
  crontab: "",
  noHandleSignals: true,
  logger,
  events,
  preset: {
    worker: {
      connectionString: url,
      concurrentJobs: concurrency,
      maxPoolSize: poolSize,
      localQueue: { size: localQueueSize },
      completeJobBatchDelay: 0,
    },
  },
});

const timeout = setTimeout(() => {
  console.error(`bench-graphile: did not finish within 600s: ${completed} of ${jobs} completed`);
  process.exit(1);
}, 600_000);
await allCompletedP;
// A job:success fires before its batched completion commits: the clock stops
// only once the table is empty.
for (;;) {
  const left = Number((await client.query("select count(*) from graphile_worker.jobs")).rows[0].count);
  if (left === 0) break;
  await new Promise((r) => setTimeout(r, 5));
}
const seconds = Number(process.hrtime.bigint() - began) / 1e9;
clearTimeout(timeout);
await runner.stop();
await client.end();

const line = {
  peer: "graphile-worker",
  version,
  jobs,
  seconds: Math.round(seconds * 1000) / 1000,
  jobs_per_s: Math.round((jobs / seconds) * 10) / 10,
  concurrency,
  local_queue_size: localQueueSize,
  pool_size: poolSize,
  complete_job_batch_delay: 0,
  node: process.version,
};
if (failed) line.warning = `${failed} job attempts failed`;
console.log(JSON.stringify(line));
