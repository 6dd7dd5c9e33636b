#!/usr/bin/env python3
"""Uses the client that openapi-python-client generated from /openapi.json against a running
gateway, as a user would, and checks that every representation says the same thing:

- the records of a range fetched as JSON models, page by page along `meta.next_cursor`;
- the same range as NDJSON (bytes, one record a line) and as CSV (text, one row a record);
- the summary of the range as a JSON model and as CSV;
- a refused request as a `Problem` model;
- a change-feed ticket as a `Ticket` model, whose URL opens the stream without a key header
  (what a browser's EventSource does) and delivers a `created` event holding a record.

The three record sets must be equal by (sessionId, conversationId), in the same order, and
as many as `meta.total`; the summary's JSON total, the sum of its CSV `count` column and the
record count must be one number. Generated code is imported from the directory given
(never committed: ci/clients.sh generates it into target/).

Usage: check_python.py GENERATED_DIR BASE_URL API_KEY
"""

import csv
import datetime
import io
import json
import sys

import httpx

generated, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, generated)

from kore_gateway_client import AuthenticatedClient  # noqa: E402
from kore_gateway_client.api.interactions import (  # noqa: E402
    get_interactions,
    get_interactions_csv,
    get_interactions_ndjson,
    get_summary,
    get_summary_csv,
    issue_ticket,
)
from kore_gateway_client.models import (  # noqa: E402
    GetSummaryCsvGroupByItem,
    GetSummaryGroupByItem,
    InteractionsResponse,
    Problem,
    SummaryResponse,
    Ticket,
)
from kore_gateway_client.types import File, Unset  # noqa: E402

# A month in a zone with an offset (about 3,000 demo records): several JSON pages.
RANGE = {"from_": "2024-09-01", "to": "2024-09-30", "tz": "Asia/Kolkata"}
PAGE = 500

failures = []


def check(ok, what):
    print(f"   {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def ident(session, conversation):
    # CSV has an empty cell where JSON has no conversationId.
    return (session or "", conversation or "")


# Any status the document does not list for an operation raises instead of passing quietly.
client = AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True, timeout=300)

with client:
    # JSON: models, one page after another.
    records, pages, cursor, meta = [], 0, None, None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        page = get_interactions.sync(client=client, limit=PAGE, **RANGE, **extra)
        if not isinstance(page, InteractionsResponse):
            sys.exit(f"JSON page {pages + 1}: expected InteractionsResponse, got {page!r}")
        pages += 1
        meta = page.meta
        records += [ident(r.session_id, r.conversation_id) for r in page.data]
        cursor = page.meta.next_cursor
        if not cursor or isinstance(cursor, Unset):
            break
    print(f"   JSON: {len(records)} records in {pages} pages (meta.total {meta.total}, complete {meta.complete})")
    check(pages > 1, "the JSON range takes more than one page (the cursor is followed)")
    check(meta.complete, "JSON meta.complete")
    check(len(records) == meta.total, "JSON records == meta.total")
    check(len(set(records)) == len(records), "no JSON record twice")

    # NDJSON: bytes, one record a line.
    nd = get_interactions_ndjson.sync(client=client, **RANGE)
    if not isinstance(nd, File):
        sys.exit(f"NDJSON: expected a File, got {nd!r}")
    lines = [json.loads(line) for line in nd.payload.read().decode("utf-8").splitlines() if line]
    nd_ids = [ident(r.get("sessionId"), r.get("conversationId")) for r in lines]
    print(f"   NDJSON: {len(nd_ids)} lines")
    check(nd_ids == records, "NDJSON lines == JSON records (same ids, same order)")

    # CSV: text, one row a record.
    text = get_interactions_csv.sync(client=client, **RANGE)
    if not isinstance(text, str):
        sys.exit(f"CSV: expected text, got {text!r}")
    rows = list(csv.DictReader(io.StringIO(text)))
    csv_ids = [ident(r.get("sessionId"), r.get("conversationId")) for r in rows]
    print(f"   CSV: {len(csv_ids)} rows")
    check(csv_ids == records, "CSV rows == JSON records (same ids, same order)")

    # The summary as a model and as CSV.
    summary = get_summary.sync(
        client=client, group_by=[GetSummaryGroupByItem.DAY, GetSummaryGroupByItem.CHANNEL], **RANGE
    )
    if not isinstance(summary, SummaryResponse):
        sys.exit(f"summary: expected SummaryResponse, got {summary!r}")
    group_sum = sum(g.count for g in summary.groups)
    summary_csv = get_summary_csv.sync(
        client=client, group_by=[GetSummaryCsvGroupByItem.DAY, GetSummaryCsvGroupByItem.CHANNEL], **RANGE
    )
    if not isinstance(summary_csv, str):
        sys.exit(f"summary CSV: expected text, got {summary_csv!r}")
    summary_rows = list(csv.DictReader(io.StringIO(summary_csv)))
    csv_total = sum(int(r["count"]) for r in summary_rows)
    print(
        f"   summary: JSON total {summary.meta.total} in {len(summary.groups)} groups; "
        f"CSV {csv_total} in {len(summary_rows)} rows"
    )
    check(summary.meta.total == csv_total, "summary JSON total == summary CSV total")
    check(len(summary.groups) == len(summary_rows), "summary JSON groups == summary CSV rows")
    check(group_sum == summary.meta.total == len(records), "summary counts == records of the range")

    # A refusal is a Problem model, not an exception or a parse error.
    refused = get_interactions.sync(client=client, from_="2024-09-10", to="2024-09-01")
    check(
        isinstance(refused, Problem) and refused.status == 400,
        f"from after to is a 400 Problem ({refused!r})",
    )

    # The change feed: a ticket from the generated client, then the stream it opens, read
    # without any key header (the ticket is the credential), up to its first record.
    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=24)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    ticket = issue_ticket.sync(client=client, tz="UTC", since=since)
    check(isinstance(ticket, Ticket) and "ticket=" in ticket.url, f"a ticket is a Ticket model ({ticket!r})")
    first = None
    with httpx.Client(base_url=base, timeout=60) as plain:
        with plain.stream("GET", ticket.url, headers={"Accept": "text/event-stream"}) as stream:
            check(stream.status_code == 200, f"the ticket's URL opens the stream ({stream.status_code})")
            event, data = None, []
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and event:
                    if event == "created":
                        first = json.loads("\n".join(data))
                        break
                    event, data = None, []
    check(first is not None and "sessionId" in first, "the stream's first event is a created record")
    print(f"   change feed: first created record {first and first.get('sessionId')}")

if failures:
    print(f"python client: FAILED ({len(failures)}): {'; '.join(failures)}")
    sys.exit(1)
print("python client: every check passed")
