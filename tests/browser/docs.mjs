// Opens Swagger UI at <base>/docs/ in headless Chromium, authorises with an API key, runs
// "Try it out" on GET /v1/interactions and checks for a 200 with records. Fails on any
// request that leaves the gateway (the UI must be served offline) and on page errors.
// Usage: node docs.mjs <base-url> <api-key> <screenshot.png>
import { chromium } from 'playwright-core';

const [base, key, shot] = process.argv.slice(2);
if (!base || !key || !shot) {
  console.error('usage: node docs.mjs <base-url> <api-key> <screenshot.png>');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
  const origin = new URL(base).origin;
  page.on('request', (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) failures.push(`external request: ${r.url()}`);
  });
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.setDefaultTimeout(15000);

  await page.goto(`${base}/docs/`);
  await page.waitForSelector('.swagger-ui .info .title');

  // Authorize: fill the bearer scheme with the API key.
  await page.click('.auth-wrapper button.authorize');
  const modal = page.locator('.modal-ux');
  await modal.locator('input').first().fill(key);
  await modal.locator('button.authorize').first().click();
  await modal.locator('button.btn-done').first().click();

  // Expand GET /v1/interactions and run it.
  const op = page.locator('.opblock-get').filter({ has: page.locator('[data-path="/v1/interactions"]') }).first();
  await op.locator('.opblock-summary').click();
  // The UI opens operations in try-out mode (tryItOutEnabled); click only if it did not.
  const tryOut = op.locator('button.try-out__btn');
  if ((await tryOut.innerText()).trim().toLowerCase() === 'try it out') await tryOut.click();
  const fill = async (name, value) => op.locator(`tr[data-param-name="${name}"] input`).fill(value);
  await fill('from', '2024-09-26');
  await fill('to', '2024-09-26');
  await fill('tz', 'Asia/Kolkata');
  await fill('limit', '3');
  await op.locator('button.execute').click();

  const status = op.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor();
  const code = (await status.innerText()).trim();
  const body = await op.locator('.live-responses-table .response-col_description .microlight, .live-responses-table .response-col_description pre').first().innerText();
  await page.screenshot({ path: shot, fullPage: true });
  if (!code.startsWith('200')) failures.push(`Try it out answered ${code}: ${body.slice(0, 300)}`);
  if (!body.includes('sessionId')) failures.push(`no records in the response: ${body.slice(0, 300)}`);
  console.log(`docs test: status ${code}, ${body.split('sessionId').length - 1} records shown, screenshot ${shot}`);
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join('\n'));
  process.exit(1);
}
