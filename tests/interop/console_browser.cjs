// The web console end to end in a real browser: Debian's chromium driven by playwright-core,
// with Chromium's virtual WebAuthn authenticator (user verification on) standing in for each
// person's passkey. Driven by tests/console_browser.rs, which starts keyguard and checks the
// audit log afterwards.
//
// stdin: {"admin": "https://localhost:PORT", "rpc": "http://127.0.0.1:PORT", "from": "0x...",
//         "cert": "<server certificate PEM>", "shots": "<dir>",
//         "users": {"ann": "<TOTP secret hex>", ...}}
// stdout: one JSON object with what each step saw; exit 1 with {"error"} on the first failure.
// Run with NODE_PATH pointing at the node_modules that holds playwright-core (tests/run).
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { chromium } = require('playwright-core');

function totp(hexSecret) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30)));
  const h = crypto.createHmac('sha1', Buffer.from(hexSecret, 'hex')).update(counter).digest();
  const o = h[19] & 0x0f;
  const bin = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(bin % 1000000).padStart(6, '0');
}

async function rpc(url, method, params) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  return r.json();
}

function tx(from, value, nonce) {
  return [{
    from, to: '0x000000000000000000000000000000000000dEaD', value: '0x' + value.toString(16),
    gas: '0x5208', maxFeePerGas: '0x3b9aca00', maxPriorityFeePerGas: '0x1',
    nonce: '0x' + nonce.toString(16), chainId: '0x7a69',
  }];
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// Waits for the answer of a console action and fails with its text unless it succeeded.
async function succeeded(page, what) {
  const el = page.locator('#outcome');
  await el.waitFor({ timeout: 15000 });
  const cls = await el.getAttribute('class');
  check(cls === 'ok', what + ': ' + (await page.locator('main').innerText()));
}

async function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'));
  const spki = crypto.createHash('sha256')
    .update(new crypto.X509Certificate(input.cert).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // Trust the test server's own key (not a blanket "ignore errors": WebAuthn needs a
    // certificate the browser accepts).
    args: ['--no-sandbox', '--ignore-certificate-errors-spki-list=' + spki],
  });
  const out = { steps: [] };
  const shot = async (page, name) => {
    const file = path.join(input.shots, name + '.png');
    await page.screenshot({ path: file, fullPage: true });
    out.steps.push('screenshot ' + name);
  };

  // One person: their own browser context and their own virtual authenticator.
  async function person(name, mobile) {
    const context = await browser.newContext(mobile ? { viewport: { width: 390, height: 844 }, isMobile: true } : {});
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('WebAuthn.enable');
    await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: {
        protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
        hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
      },
    });
    await page.goto(input.admin + '/console/signin');
    await page.fill('#enrol-user', name);
    await page.fill('#enrol-totp', totp(input.users[name]));
    await page.click('#enrol');
    await page.waitForSelector('#status.ok', { timeout: 15000 });
    await page.fill('#signin-user', name);
    await page.click('#signin');
    await page.waitForURL(/\/console\/(approvals|overview|keys)$/, { timeout: 15000 });
    out.steps.push(name + ' signed in with a passkey');
    return { context, page };
  }

  const eleven = 11n * 10n ** 18n;
  const held = await rpc(input.rpc, 'eth_signTransaction', tx(input.from, eleven, 0));
  check(held.error && held.error.code === -32002, 'not held: ' + JSON.stringify(held));
  const id = held.error.data.approval_id;
  out.approval_id = id;

  for (const [name, mobile] of [['ann', true], ['bob', false]]) {
    const { context, page } = await person(name, mobile);
    const card = page.locator(`.approval[data-id="${id}"]`);
    await card.waitFor();
    const text = await card.innerText();
    check(text.toLowerCase().includes('send 11 eth to 0x000000000000000000000000000000000000dead'), 'intent not shown: ' + text);
    check(text.toLowerCase().includes('(burn address)'), 'destination label not shown: ' + text);
    out[name + '_saw'] = text.split('\n')[0];
    if (name === 'ann') await shot(page, 'console-approvals-phone');
    await card.locator('input[name=totp]').fill(totp(input.users[name]));
    await card.locator('button[value="approvals.approve"]').click();
    await succeeded(page, name + ' approve');
    out.steps.push(name + ' approved');
    await context.close();
  }

  const signed = await rpc(input.rpc, 'eth_signTransaction', tx(input.from, eleven, 0));
  check(typeof signed.result === 'string', 'retry did not sign: ' + JSON.stringify(signed));
  out.signed = true;

  {
    const { context, page } = await person('aud', false);
    check(page.url().endsWith('/console/overview'), 'auditor lands on ' + page.url());
    await page.waitForSelector('#totals');
    await shot(page, 'console-overview');
    await page.goto(input.admin + '/console/audit');
    await page.fill('input[name=decision]', 'signed');
    await page.fill('input[name=chain]', 'eip155:31337');
    await page.click('form.filters button');
    await page.waitForURL('**/console/audit?**');
    const rows = await page.locator('#audit-rows tbody tr').count();
    check(rows >= 1, 'no signed rows found');
    out.auditor_rows = rows;
    await shot(page, 'console-audit');
    // The export links, fetched by the browser itself (same origin, its session cookie).
    const download = (sel) => page.evaluate(async (s) => (await fetch(document.querySelector(s).href)).text(), sel);
    const jsonl = await download('#export-jsonl');
    out.export_jsonl = jsonl.trim().split('\n').map((l) => JSON.parse(l));
    const csv = await download('#export-csv');
    out.export_csv_lines = csv.trim().split('\n').length;
    await context.close();
  }

  {
    const { context, page } = await person('op', false);
    await page.goto(input.admin + '/console/keys');
    await page.fill('#kill-form input[name=key]', 'dev-secp256k1');
    await page.fill('#kill-form input[name=totp]', totp(input.users.op));
    await page.click('#kill-form button[value="keys.disable"]');
    await succeeded(page, 'disable');
    await page.goto(input.admin + '/console/keys');
    await shot(page, 'console-keys');
    const next = await rpc(input.rpc, 'eth_signTransaction', tx(input.from, 1n, 1));
    check(next.error && next.error.code === -32004, 'not refused after disable: ' + JSON.stringify(next));
    out.refused_after_disable = next.error.message;
    await context.close();
  }

  await browser.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
});
