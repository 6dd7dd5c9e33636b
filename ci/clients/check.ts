// Uses the TypeScript types that openapi-typescript generated from /openapi.json, through
// openapi-fetch, against a running gateway, and checks that every representation says the
// same thing (the same checks as check_python.py):
//
// - the records of a range as typed JSON pages, along `meta.next_cursor`;
// - the same range as NDJSON, read as a stream, and as CSV text;
// - the summary as typed JSON and as CSV;
// - a refused request as a typed Problem.
//
// ci/clients.sh copies this file next to the generated `schema.d.ts` (in target/, never
// committed) and compiles it with `tsc --strict`, so a use the document does not allow
// (a wrong path, parameter, enum value or field) fails the build before anything runs.
//
// Usage: node check.js BASE_URL API_KEY
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error("usage: node check.js BASE_URL API_KEY");
  process.exit(2);
}

const client = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${key}` } });
// A month in a zone with an offset: several JSON pages.
const range = { from: "2024-09-01", to: "2024-09-30", tz: "Asia/Kolkata" };
const failures: string[] = [];

function check(ok: boolean, what: string): void {
  console.log(`   ${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
}

// CSV has an empty cell where JSON has no conversationId.
function ident(session: unknown, conversation: unknown): string {
  return `${session ?? ""}\u0000${conversation ?? ""}`;
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

// RFC 4180 rows: quoted cells may hold commas, quotes and line breaks.
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        cell += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
    } else {
      cell += c;
    }
  }
  if (cell !== "" || row.length > 0) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

/** The rows of a CSV as objects keyed by its header. */
function csvObjects(text: string): Record<string, string>[] {
  const [header, ...rows] = parseCsv(text);
  if (!header) return [];
  return rows.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i] ?? ""])));
}

function fail(what: string, detail: unknown): never {
  console.error(`${what}: ${JSON.stringify(detail)}`);
  process.exit(1);
}

// JSON: typed pages, one after another.
const records: string[] = [];
let pages = 0;
let cursor: string | undefined;
let total = -1;
let complete = false;
for (;;) {
  const { data, error } = await client.GET("/v1/interactions", {
    params: { query: { ...range, limit: 500, ...(cursor ? { cursor } : {}) } },
  });
  // 202 (a job) is what `Prefer: respond-async` gets; without it a page is due.
  if (!data || !("meta" in data)) fail(`JSON page ${pages + 1}`, error ?? data);
  pages++;
  total = data.meta.total;
  complete = data.meta.complete;
  for (const r of data.data) records.push(ident(r.sessionId, r.conversationId));
  cursor = data.meta.next_cursor ?? undefined;
  if (!cursor) break;
}
console.log(`   JSON: ${records.length} records in ${pages} pages (meta.total ${total}, complete ${complete})`);
check(pages > 1, "the JSON range takes more than one page (the cursor is followed)");
check(complete, "JSON meta.complete");
check(records.length === total, "JSON records == meta.total");
check(new Set(records).size === records.length, "no JSON record twice");

// NDJSON: a stream, read line by line as it comes.
const nd = await client.GET("/v1/interactions.ndjson", { params: { query: range }, parseAs: "stream" });
if (!nd.data) fail("NDJSON", nd.error);
const ndIds: string[] = [];
const decoder = new TextDecoder();
let pending = "";
const reader = nd.data.getReader();
for (;;) {
  const { done, value } = await reader.read();
  pending += done ? decoder.decode() : decoder.decode(value, { stream: true });
  const lines = pending.split("\n");
  pending = done ? "" : (lines.pop() ?? "");
  for (const line of lines.filter((l) => l.length > 0)) {
    const r = JSON.parse(line) as { sessionId?: string; conversationId?: string };
    ndIds.push(ident(r.sessionId, r.conversationId));
  }
  if (done) break;
}
console.log(`   NDJSON: ${ndIds.length} lines`);
check(sameList(ndIds, records), "NDJSON lines == JSON records (same ids, same order)");

// CSV: text.
const csv = await client.GET("/v1/interactions.csv", { params: { query: range }, parseAs: "text" });
if (csv.data === undefined) fail("CSV", csv.error);
const csvIds = csvObjects(csv.data).map((r) => ident(r.sessionId || undefined, r.conversationId || undefined));
console.log(`   CSV: ${csvIds.length} rows`);
check(sameList(csvIds, records), "CSV rows == JSON records (same ids, same order)");

// The summary, typed JSON and CSV.
const summaryQuery = { ...range, group_by: ["day", "channel"] as ("day" | "channel")[] };
const summary = await client.GET("/v1/interactions/summary", { params: { query: summaryQuery } });
if (!summary.data || !("groups" in summary.data)) fail("summary", summary.error ?? summary.data);
const summaryCsv = await client.GET("/v1/interactions/summary.csv", {
  params: { query: summaryQuery },
  parseAs: "text",
});
if (summaryCsv.data === undefined) fail("summary CSV", summaryCsv.error);
const summaryJson = summary.data;
const groupSum = summaryJson.groups.reduce((n, g) => n + (g.count ?? 0), 0);
const summaryRows = csvObjects(summaryCsv.data);
const csvTotal = summaryRows.reduce((n, r) => n + Number(r.count), 0);
console.log(
  `   summary: JSON total ${summaryJson.meta.total} in ${summaryJson.groups.length} groups; ` +
    `CSV ${csvTotal} in ${summaryRows.length} rows`,
);
check(summaryJson.meta.total === csvTotal, "summary JSON total == summary CSV total");
check(summaryJson.groups.length === summaryRows.length, "summary JSON groups == summary CSV rows");
check(groupSum === summaryJson.meta.total && groupSum === records.length, "summary counts == records of the range");

// A refusal is a typed Problem.
const refused = await client.GET("/v1/interactions", { params: { query: { from: "2024-09-10", to: "2024-09-01" } } });
check(refused.error?.status === 400 && refused.response.status === 400, `from after to is a 400 Problem (${JSON.stringify(refused.error)})`);

if (failures.length > 0) {
  console.log(`typescript client: FAILED (${failures.length}): ${failures.join("; ")}`);
  process.exit(1);
}
console.log("typescript client: every check passed");
