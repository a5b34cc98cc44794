#!/usr/bin/env node
// The broker's web dashboard in headless Chromium, driven by playwright-core.
//
// Usage: node dashboard-test.js MANAGEMENT_URL AMQP_URL SCREENSHOT.png
//
// Sets up queues and messages with amqplib (its connection stays open, so the page lists it),
// logs in through the page's form, and checks in order what a user relies on: the queues with
// their depths, the connection, the charts, the actions (purge; delete after confirm), the
// publish form (a routed message arrives in its queue; an unroutable one is reported), the
// error banner when an API call fails, and a screenshot (size, not blank, the header, chart
// lines and buttons drawn in their colours). Each check prints one PASS or FAIL line; a failed
// check ends the run (the later ones build on it), and the last line counts them. Waits are
// bounded by WAIT_MS and are waits for a state, never assertions on time.
// run-dashboard-test.sh installs the packages (package-lock.json) and sets NODE_PATH.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const zlib = require('node:zlib');
const amqp = require('amqplib');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Without the networking flags Chromium keeps trying to reach Google's services, and on a
// closed network its connections are refused (and slow its start).
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const WAIT_MS = 20_000;
const VIEWPORT = { width: 1280, height: 900 };
const RUN_ID = crypto.randomBytes(4).toString('hex');
const QUEUES = {
  orders: { name: `dashboard-${RUN_ID}-orders`, messages: 3 },
  purge: { name: `dashboard-${RUN_ID}-purge`, messages: 5 },
  publish: { name: `dashboard-${RUN_ID}-publish`, messages: 0 },
  doomed: { name: `dashboard-${RUN_ID}-doomed`, messages: 2 },
  // Broker data is shown as text, never parsed as HTML.
  markup: { name: `dashboard-${RUN_ID}-<img src=x onerror=alert(1)>`, messages: 1 },
};
// What the screenshot must show, each in its element's box: the stylesheet's colour for it
// (dashboard.css :root).
const DRAWN = [
  { what: 'the header', selector: 'header', rgb: [0x1f, 0x29, 0x33] },
  { what: 'the ready line', selector: '#depth-chart', rgb: [0xe0, 0xa8, 0x00] },
  { what: 'the publish line', selector: '#rates-chart', rgb: [0xf2, 0x65, 0x22] },
  { what: 'the delete buttons', selector: '#queues', rgb: [0xc6, 0x28, 0x28] },
];

class CheckFailed extends Error {}

function expect(cond, message) {
  if (!cond) throw new CheckFailed(message);
}

const [managementUrl, amqpUrl, screenshotPath] = process.argv.slice(2);
if (!managementUrl || !amqpUrl || !screenshotPath) {
  console.error('usage: node dashboard-test.js MANAGEMENT_URL AMQP_URL SCREENSHOT.png');
  process.exit(2);
}

// --- the broker, seen without the page -------------------------------------------------------

async function apiGet(path) {
  const response = await fetch(`${managementUrl}${path}`, {
    headers: { Authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
  });
  return { status: response.status, body: response.ok ? await response.json() : null };
}

const queuePath = (name) => `/api/queues/%2F/${encodeURIComponent(name)}`;

// Polls until `probe` returns a truthy value (returned), or fails with `what`.
async function eventually(what, probe) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new CheckFailed(`${what} (waited ${WAIT_MS / 1000} s)`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

// --- the page ----------------------------------------------------------------------------------

// Waits until `selector` matches an element whose text is `text`.
async function waitForText(page, selector, text) {
  try {
    await page.waitForFunction(
      ([s, t]) => document.querySelector(s)?.textContent.trim() === t,
      [selector, text],
      { timeout: WAIT_MS },
    );
  } catch {
    const actual = await page.$eval(selector, (e) => e.textContent.trim()).catch(() => '(no such element)');
    throw new CheckFailed(`${selector}: expected "${text}", got "${actual}"`);
  }
}

const row = (queue) => `#queues tr[data-queue="${queue}"]`;

// --- the screenshot ----------------------------------------------------------------------------

// Decodes an 8-bit RGB or RGBA PNG (what Chromium writes) into rows of [r, g, b] pixels.
function decodePng(png) {
  expect(png.subarray(1, 4).toString() === 'PNG', 'the screenshot is not a PNG');
  let offset = 8;
  let header;
  const data = [];
  while (offset < png.length) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('ascii', offset + 4, offset + 8);
    const body = png.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      header = { width: body.readUInt32BE(0), height: body.readUInt32BE(4), depth: body[8], colour: body[9] };
    } else if (type === 'IDAT') {
      data.push(body);
    }
    offset += 12 + length;
  }
  expect(header && header.depth === 8 && (header.colour === 2 || header.colour === 6),
    `unexpected PNG format ${JSON.stringify(header)}`);
  const channels = header.colour === 6 ? 4 : 3;
  const stride = header.width * channels;
  const raw = zlib.inflateSync(Buffer.concat(data));
  const rows = [];
  let previous = Buffer.alloc(stride);
  for (let y = 0; y < header.height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? line[i - channels] : 0;
      const b = previous[i];
      const c = i >= channels ? previous[i - channels] : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      line[i] = (line[i] + predictor) & 0xff;
    }
    const pixels = [];
    for (let x = 0; x < header.width; x++) pixels.push([...line.subarray(x * channels, x * channels + 3)]);
    rows.push(pixels);
    previous = line;
  }
  return { width: header.width, height: header.height, rows };
}

// --- the checks ----------------------------------------------------------------------------------

async function main() {
  const connection = await amqp.connect(amqpUrl, { clientProperties: { connection_name: `dashboard-test-${RUN_ID}` } });
  const channel = await connection.createConfirmChannel();
  for (const { name, messages } of Object.values(QUEUES)) {
    await channel.assertQueue(name, { durable: false });
    for (let i = 0; i < messages; i++) channel.sendToQueue(name, Buffer.from(`message ${i}`));
  }
  await channel.waitForConfirms();

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: WAIT_MS * 3 });
  const page = await browser.newPage({ viewport: VIEWPORT });
  const scriptErrors = [];
  page.on('pageerror', (e) => scriptErrors.push(e.message));
  const dialogs = [];
  // confirm() answers: the next entry of `answers` (true accepts), recorded with its text.
  const answers = [];
  page.on('dialog', async (dialog) => {
    dialogs.push(dialog.message());
    if (answers.shift()) await dialog.accept();
    else await dialog.dismiss();
  });

  const checks = [
    ['the login form rejects a wrong password', async () => {
      await page.goto(`${managementUrl}/`);
      await page.fill('#login [name=username]', 'guest');
      await page.fill('#login [name=password]', 'wrong');
      await page.click('#login button[type=submit]');
      await waitForText(page, '#login-error', 'Login failed: wrong user or password.');
      expect(await page.isHidden('#dashboard'), 'the dashboard shows without a login');
    }],
    ['logging in shows the dashboard', async () => {
      await page.fill('#login [name=password]', 'guest');
      await page.click('#login button[type=submit]');
      await page.waitForSelector('#dashboard', { state: 'visible', timeout: WAIT_MS });
      await waitForText(page, '#user', 'guest');
      expect(await page.isHidden('#login-section'), 'the login form is still shown');
    }],
    ['the queues table lists each queue with its depth', async () => {
      for (const { name, messages } of Object.values(QUEUES)) {
        await waitForText(page, `${row(name)} td.ready`, String(messages));
        await waitForText(page, `${row(name)} td.unacked`, '0');
        await waitForText(page, `${row(name)} td.consumers`, '0');
      }
      const { name } = QUEUES.markup;
      const shown = await page.$eval(`${row(name)} td.name`, (td) => ({ text: td.textContent, elements: td.childElementCount }));
      expect(shown.text === name && shown.elements === 0, `the queue named ${name} shows as ${JSON.stringify(shown)}`);
      const queues = Number(await page.textContent('[data-total="queues"]'));
      expect(queues >= Object.keys(QUEUES).length, `the overview counts ${queues} queues`);
    }],
    ['the connections table shows the test client', async () => {
      await page.waitForFunction(
        () => [...document.querySelectorAll('#connections tbody tr')].some((tr) => tr.textContent.includes('amqplib')),
        null,
        { timeout: WAIT_MS },
      );
      const connections = Number(await page.textContent('[data-total="connections"]'));
      expect(connections >= 1, `the overview counts ${connections} connections`);
    }],
    ['the charts are drawn', async () => {
      await page.waitForSelector('#depth-chart polyline.series.ready', { state: 'attached', timeout: WAIT_MS });
      expect(await page.$('#rates-chart line.axis'), 'the rates chart has no axis');
      // Publish a burst: a later poll shows a publish rate above zero, in the legend and in the
      // queue's row, and the chart draws it.
      for (let i = 0; i < 20; i++) channel.sendToQueue(QUEUES.orders.name, Buffer.from(`burst ${i}`));
      await channel.waitForConfirms();
      await waitForText(page, `${row(QUEUES.orders.name)} td.ready`, '23');
      try {
        await page.waitForFunction(
          (selectors) => selectors.every((s) => {
            const shown = document.querySelector(s)?.textContent ?? '';
            return /^[\d,.]+\/s$/.test(shown) && shown !== '0.0/s';
          }),
          ['[data-latest="publish"]', `${row(QUEUES.orders.name)} td.publish-rate`],
          { timeout: WAIT_MS },
        );
      } catch {
        const shown = await page.textContent('[data-latest="publish"]');
        throw new CheckFailed(`no publish rate above zero after the burst (the legend reads "${shown}")`);
      }
      expect(await page.$('#rates-chart polyline.series.publish'), 'the rates chart has no publish line');
    }],
    ['every queue has purge and delete buttons', async () => {
      for (const { name } of Object.values(QUEUES)) {
        const labels = await page.$$eval(`${row(name)} button`, (buttons) => buttons.map((b) => b.textContent));
        expect(JSON.stringify(labels) === '["Purge","Delete"]', `${name} has buttons ${JSON.stringify(labels)}`);
      }
    }],
    ['purge (confirmed) empties the queue', async () => {
      const { name } = QUEUES.purge;
      answers.push(true);
      await page.click(`${row(name)} button[data-action=purge]`);
      expect(dialogs.at(-1)?.includes(name), `the confirm question was "${dialogs.at(-1)}"`);
      await eventually(`${name} still holds messages after purge`, async () => {
        const { body } = await apiGet(queuePath(name));
        return body?.messages === 0;
      });
      await waitForText(page, `${row(name)} td.ready`, '0');
      await waitForText(page, '#action-result', `Purged queue "${name}" in virtual host "/".`);
      const { body } = await apiGet(queuePath(QUEUES.orders.name));
      expect(body?.messages === 23, `purging one queue changed another: ${JSON.stringify(body?.messages)}`);
    }],
    ['delete asks first, and deletes only when confirmed', async () => {
      const { name } = QUEUES.doomed;
      answers.push(false);
      await page.click(`${row(name)} button[data-action=delete]`);
      expect(dialogs.at(-1)?.includes(name), `the confirm question was "${dialogs.at(-1)}"`);
      const kept = await apiGet(queuePath(name));
      expect(kept.status === 200 && kept.body.messages === 2, `after "cancel": ${JSON.stringify(kept)}`);
      answers.push(true);
      await page.click(`${row(name)} button[data-action=delete]`);
      await eventually(`${name} still exists after delete`, async () => (await apiGet(queuePath(name))).status === 404);
      await page.waitForSelector(row(name), { state: 'detached', timeout: WAIT_MS });
    }],
    ['the publish form routes a message to its queue', async () => {
      const { name } = QUEUES.publish;
      const payload = `hello from the dashboard ${RUN_ID}`;
      await page.fill('#publish [name=exchange]', '');
      await page.fill('#publish [name=routing_key]', name);
      await page.fill('#publish [name=payload]', payload);
      await page.click('#publish button[type=submit]');
      await waitForText(page, '#publish-result',
        `Published to exchange "amq.default" with routing key "${name}": routed.`);
      await waitForText(page, `${row(name)} td.ready`, '1');
      const message = await channel.get(name, { noAck: true });
      expect(message && message.content.toString() === payload,
        `the queue holds ${message ? JSON.stringify(message.content.toString()) : 'nothing'}`);
    }],
    ['the publish form reports an unroutable message', async () => {
      const key = `dashboard-${RUN_ID}-nobody`;
      await page.fill('#publish [name=routing_key]', key);
      await page.click('#publish button[type=submit]');
      await waitForText(page, '#publish-result',
        `Published to exchange "amq.default", but no queue was bound for routing key "${key}": not routed.`);
    }],
    ['a failing API call shows the error banner until it answers again', async () => {
      await page.route('**/api/queues', (route) => route.fulfill({
        status: 500,
        contentType: 'application/json',
        body: JSON.stringify({ error: 'internal_error', reason: 'injected by the test' }),
      }));
      await page.waitForSelector('#error', { state: 'visible', timeout: WAIT_MS });
      const banner = await page.textContent('#error');
      expect(banner.includes('GET /api/queues: 500 internal_error: injected by the test'), `the banner reads "${banner}"`);
      expect(await page.$eval('#queues-section', (s) => s.classList.contains('stale')), 'the queues are not marked stale');
      expect(!(await page.$eval('#overview', (s) => s.classList.contains('stale'))), 'the overview is marked stale');
      await page.unroute('**/api/queues');
      await page.waitForSelector('#error', { state: 'hidden', timeout: WAIT_MS });
      expect(!(await page.$eval('#queues-section', (s) => s.classList.contains('stale'))), 'the queues stay stale');
    }],
    ['the screenshot shows the dashboard', async () => {
      await page.screenshot({ path: screenshotPath, fullPage: true });
      const png = decodePng(fs.readFileSync(screenshotPath));
      expect(png.width === VIEWPORT.width && png.height >= VIEWPORT.height,
        `the screenshot is ${png.width}x${png.height}, expected ${VIEWPORT.width} wide and at least ${VIEWPORT.height} high`);
      const counts = new Map();
      for (const pixels of png.rows) {
        for (const p of pixels) counts.set(p.join(), (counts.get(p.join()) ?? 0) + 1);
      }
      expect(counts.size >= 50, `the screenshot has only ${counts.size} colours (blank?)`);
      const [background, most] = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
      const total = png.width * png.height;
      expect(most < total * 0.9, `${Math.round((most / total) * 100)}% of the screenshot is ${background}`);
      for (const { what, selector, rgb } of DRAWN) {
        // The element's box in page coordinates, which are the full-page screenshot's.
        const box = await page.$eval(selector, (e) => {
          const r = e.getBoundingClientRect();
          return { x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height };
        });
        let found = false;
        for (let y = Math.floor(box.y); y < box.y + box.height && y < png.height && !found; y++) {
          for (let x = Math.floor(box.x); x < box.x + box.width && x < png.width && !found; x++) {
            found = png.rows[y][x].join() === rgb.join();
          }
        }
        expect(found, `${what} (${selector}) has no pixel of its colour rgb(${rgb.join(', ')})`);
      }
      console.log(`  screenshot ${screenshotPath}: ${png.width}x${png.height}, ${counts.size} colours`);
    }],
    ['no script errors on the page', async () => {
      expect(scriptErrors.length === 0, `script errors: ${scriptErrors.join('; ')}`);
    }],
  ];

  let passed = 0;
  let failed = 0;
  try {
    for (const [name, check] of checks) {
      try {
        await check();
        passed += 1;
        console.log(`PASS ${name}`);
      } catch (e) {
        failed += 1;
        console.log(`FAIL ${name}: ${e instanceof CheckFailed ? e.message : e.stack}`);
        break;
      }
    }
  } finally {
    await browser.close();
    for (const { name } of Object.values(QUEUES)) await channel.deleteQueue(name).catch(() => {});
    await connection.close().catch(() => {});
  }
  const skipped = checks.length - passed - failed;
  console.log(`dashboard: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exitCode = failed === 0 ? 0 : 1;
}

main().catch((e) => {
  console.error(`error: ${e.stack}`);
  process.exitCode = 1;
});
