// From a page on another origin (the Rust test serves it), in headless Chromium: follow the
// change feed the two ways a browser can.
// 1. EventSource, which cannot send a header: POST for a ticket with the key in a header,
//    then `new EventSource(gateway + url)` until one `created` event.
// 2. fetch with the key header, the body read as a stream (what
//    @microsoft/fetch-event-source does) until one `event: created` frame.
// Prints what the page's script saw as one JSON line. Fails on page errors and on a fetch
// the browser refuses.
// Usage: node feed.mjs <page-url> <gateway-base-url> <api-key> <since>
import { chromium } from 'playwright-core';

const [pageUrl, gateway, key, since] = process.argv.slice(2);
if (!pageUrl || !gateway || !key || !since) {
  console.error('usage: node feed.mjs <page-url> <gateway-base-url> <api-key> <since>');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const failures = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.setDefaultTimeout(90000);
  await page.goto(pageUrl);
  const seen = await page.evaluate(async ([gateway, key, since]) => {
    const WITHIN = 60000;
    const query = `since=${encodeURIComponent(since)}`;

    // 1. A ticket, then EventSource.
    const t = await fetch(`${gateway}/v1/interactions/changes/tickets?${query}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}` },
    });
    const ticket = { status: t.status, ...(await t.json()) };
    const eventsource = await new Promise((resolve) => {
      const source = new EventSource(gateway + ticket.url);
      const report = { opened: false, errors: 0 };
      const timer = setTimeout(() => {
        source.close();
        resolve({ ...report, error: `no created event within ${WITHIN} ms` });
      }, WITHIN);
      source.onopen = () => { report.opened = true; };
      // EventSource reconnects by itself after an error; count them, keep waiting.
      source.onerror = () => { report.errors += 1; };
      source.addEventListener('created', (e) => {
        clearTimeout(timer);
        source.close();
        let sessionId = null;
        try {
          sessionId = JSON.parse(e.data).sessionId ?? null;
        } catch (err) {
          report.parse_error = String(err);
        }
        resolve({ ...report, lastEventId: e.lastEventId, sessionId, event_origin: e.origin });
      });
    });

    // 2. fetch with the key header, read as a stream.
    const stream = {};
    const r = await fetch(`${gateway}/v1/interactions/changes?${query}`, {
      headers: { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' },
    });
    stream.status = r.status;
    stream.content_type = r.headers.get('Content-Type');
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    const deadline = Date.now() + WITHIN;
    while (!stream.frame && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) {
        stream.ended = true;
        break;
      }
      buf += decoder.decode(value, { stream: true });
      let end;
      while (!stream.frame && (end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const lines = block.split('\n');
        if (lines.includes('event: created')) {
          stream.frame = block;
          const field = (name) => lines.filter((l) => l.startsWith(`${name}: `)).map((l) => l.slice(name.length + 2));
          stream.id = field('id')[0] ?? null;
          try {
            stream.sessionId = JSON.parse(field('data').join('\n')).sessionId ?? null;
          } catch (err) {
            stream.parse_error = String(err);
          }
        }
      }
    }
    await reader.cancel();
    return { origin: location.origin, ticket, eventsource, stream };
  }, [gateway, key, since]);
  console.log(JSON.stringify(seen));
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join('\n'));
  process.exit(1);
}
