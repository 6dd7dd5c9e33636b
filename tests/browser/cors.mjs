// From a page on another origin (the Rust test serves it), in headless Chromium: fetch a CSV
// export and a JSON page from the gateway with an API key (a preflighted cross-origin
// request) and report what the page's script can read of the answers' headers, as one JSON
// line. Fails on page errors and on a fetch the browser refuses.
// Usage: node cors.mjs <page-url> <gateway-base-url> <api-key>
import { chromium } from 'playwright-core';

const [pageUrl, gateway, key] = process.argv.slice(2);
if (!pageUrl || !gateway || !key) {
  console.error('usage: node cors.mjs <page-url> <gateway-base-url> <api-key>');
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
  page.setDefaultTimeout(30000);
  await page.goto(pageUrl);
  const seen = await page.evaluate(async ([gateway, key]) => {
    const read = async (query) => {
      const r = await fetch(`${gateway}/v1/interactions?${query}`, {
        headers: { Authorization: `Bearer ${key}` },
      });
      const h = (name) => r.headers.get(name);
      return {
        status: r.status,
        body: await r.text(),
        x_complete: h('X-Complete'),
        x_stale: h('X-Stale'),
        x_cache: h('X-Cache'),
        x_request_id: h('X-Request-Id'),
        content_disposition: h('Content-Disposition'),
        cache_status: h('Cache-Status'),
        etag: h('ETag'),
      };
    };
    const range = 'from=2024-09-26&to=2024-09-26&tz=Asia/Kolkata';
    return {
      origin: location.origin,
      csv: await read(`${range}&format=csv`),
      json: await read(`${range}&limit=3`),
    };
  }, [gateway, key]);
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
