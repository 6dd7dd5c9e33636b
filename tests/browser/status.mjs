// Opens the status page at <base>/status#key=<key> in headless Chromium, waits until it
// has drawn /status.json, and prints the numbers it shows as one JSON line (the Rust test
// compares them with /metrics). Fails on any request that leaves the gateway and on page
// errors. Usage: node status.mjs <base-url> <api-key> <screenshot.png>
import { chromium } from 'playwright-core';

const [base, key, shot] = process.argv.slice(2);
if (!base || !key || !shot) {
  console.error('usage: node status.mjs <base-url> <api-key> <screenshot.png>');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const origin = new URL(base).origin;
  page.on('request', (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) failures.push(`external request: ${r.url()}`);
  });
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') failures.push(`console error: ${m.text()}`); });
  page.setDefaultTimeout(15000);
  await page.goto(`${base}/status#key=${encodeURIComponent(key)}`);
  await page.waitForSelector('body[data-loaded]');
  if (page.url().includes(key)) failures.push('the key stayed in the address bar');
  const text = async (sel) => (await page.locator(sel).first().innerText()).trim();
  const tier = page.locator('#tiers tr').first().locator('td');
  const shown = {
    upstream_calls: Number(await text('#upstream-calls')),
    budget_quota: Number(await text('#budget-quota')),
    window_entries: Number((await tier.nth(1).innerText()).trim()),
    window_hits: Number((await tier.nth(3).innerText()).trim()),
    window_misses: Number((await tier.nth(4).innerText()).trim()),
    callers: await page.locator('#callers tr').count(),
    jobs: await page.locator('#jobs tr[data-job]').count(),
    job_states: await page.locator('#jobs tr[data-job] td:nth-child(3)').allInnerTexts(),
    chart_bars: await page.locator('#chart rect').count(),
    hit_ratio: await text('#hit-ratio'),
    feed_subscribers: Number(await text('#feed-subscribers')),
    feed_sent: Number(await text('#feed-sent')),
    feed_topics: await page.locator('#topics tr[data-topic]').count(),
  };
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`SHOWN ${JSON.stringify(shown)}`);
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join('\n'));
  process.exit(1);
}
