// Drives what a person does in a browser against torhaus in front of an app, with the test
// OpenID Provider behind it, in Debian's headless chromium. Prints one JSON line of what it saw;
// the Rust test (tests/tests/auth_browser.rs) asserts on it. Fails with a message otherwise.
// Usage: node auth-flow.mjs SCENARIO GATEWAY_ORIGIN PROVIDER_ISSUER
//   login-refresh   log in as alice, then keep using the app past the access token's expiry
//   logout-websocket  log in, open a WebSocket, log out: the socket ends, the provider asks again
//   backchannel     log in, end the session at the provider alone: the gateway forgets it too
//   denied          bob logs in to the admins-only rule and gets the 403 page
import { chromium } from 'playwright-core';

const [scenario, origin, issuer] = process.argv.slice(2);
const opOrigin = new URL(issuer).origin;
const deadline = (ms) => Date.now() + ms;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function newContext() {
  const context = await browser.newContext();
  // Only the gateway and the provider exist here (the provider's pages link web fonts).
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith(opOrigin)) return route.continue();
    return route.abort();
  });
  return context;
}

// Signs in on the provider's form if the page shows it; returns whether it did.
async function signInIfAsked(page, user) {
  if (!page.url().startsWith(opOrigin)) return false;
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', user);
  await Promise.all([page.waitForURL((u) => u.toString().startsWith(origin)), page.click('button[type=submit]')]);
  return true;
}

// The echo backend's JSON as the page shows it.
async function echoed(page) {
  const text = await page.innerText('body');
  try { return JSON.parse(text); } catch { throw new Error(`not the app's echo at ${page.url()}: ${text.slice(0, 500)}`); }
}

function header(echo, name) {
  for (const [k, v] of Object.entries(echo.headers || {})) if (k.toLowerCase() === name) return v[0];
  return undefined;
}

async function login(context, user, path = '/app') {
  const page = await context.newPage();
  await page.goto(`${origin}${path}`, { waitUntil: 'domcontentloaded' });
  if (!page.url().startsWith(opOrigin)) throw new Error(`no login redirect: at ${page.url()}`);
  await signInIfAsked(page, user);
  return page;
}

async function sessionCookie(context) {
  return (await context.cookies(origin)).find((c) => c.name === 'torhaus_session');
}

const result = { scenario };
try {
  if (scenario === 'login-refresh') {
    const context = await newContext();
    const page = await login(context, 'alice');
    result.user = header(await echoed(page), 'x-authentik-username');
    const first = await sessionCookie(context);
    result.cookieBytes = first ? first.value.length : 0;
    // Keep using the app until the gateway has refreshed the access token (a new session
    // cookie) without sending the browser back to the provider.
    const opRequests = [];
    page.on('request', (r) => { if (r.url().startsWith(opOrigin)) opRequests.push(r.url()); });
    const until = deadline(20000);
    let refreshed = false;
    while (Date.now() < until) {
      await page.goto(`${origin}/app/again`, { waitUntil: 'domcontentloaded' });
      const now = await sessionCookie(context);
      if (now && first && now.value !== first.value) { refreshed = true; break; }
      await page.waitForTimeout(300);
    }
    result.refreshed = refreshed;
    result.userAfterRefresh = header(await echoed(page), 'x-authentik-username');
    result.providerRequestsDuringRefresh = opRequests.length;
  } else if (scenario === 'logout-websocket') {
    const context = await newContext();
    const page = await login(context, 'alice');
    result.user = header(await echoed(page), 'x-authentik-username');
    // A WebSocket under the session: it echoes while the session lives.
    result.echoBeforeLogout = await page.evaluate((wsUrl) => new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl);
      window.__ws = ws;
      window.__closed = false;
      ws.onclose = () => { window.__closed = true; };
      ws.onerror = () => reject(new Error('websocket error'));
      ws.onopen = () => ws.send('hello');
      ws.onmessage = (m) => resolve(m.data);
      setTimeout(() => reject(new Error('no echo')), 5000);
    }), `${origin.replace('http', 'ws')}/app/ws`);
    // Log out in another tab: the gateway sends the browser to the provider's end_session.
    const other = await context.newPage();
    await other.goto(`${origin}/oauth2/sign_out`, { waitUntil: 'domcontentloaded' });
    result.logoutAt = other.url().startsWith(opOrigin) ? 'provider' : other.url();
    if (await other.$('button[name=logout][value=yes]')) {
      await Promise.all([other.waitForURL((u) => !u.toString().includes('/session/end')), other.click('button[name=logout][value=yes]')]);
    }
    // The next frame on the old socket ends it.
    result.socketClosedAfterLogout = await page.evaluate(() => new Promise((resolve) => {
      const ws = window.__ws;
      let answered = false;
      ws.onmessage = () => { answered = true; };
      try { ws.send('after logout'); } catch { /* already closed */ }
      const started = Date.now();
      const poll = () => {
        if (window.__closed) return resolve(!answered);
        if (Date.now() - started > 5000) return resolve(false);
        setTimeout(poll, 50);
      };
      poll();
    }));
    // The provider's session is gone too: the app needs the password again.
    const again = await context.newPage();
    await again.goto(`${origin}/app`, { waitUntil: 'domcontentloaded' });
    result.askedForPasswordAgain = again.url().startsWith(opOrigin) && !!(await again.$('input[name=password]'));
  } else if (scenario === 'backchannel') {
    const context = await newContext();
    const page = await login(context, 'alice');
    result.user = header(await echoed(page), 'x-authentik-username');
    // End the session at the provider alone (as its own logout page or an admin would).
    const op = await context.newPage();
    await op.goto(`${issuer}session/end`, { waitUntil: 'domcontentloaded' });
    if (await op.$('button[name=logout][value=yes]')) {
      await Promise.all([op.waitForEvent('framenavigated'), op.click('button[name=logout][value=yes]')]);
    }
    // The provider calls the gateway's back-channel endpoint; the session then stops working.
    const until = deadline(10000);
    let revoked = false;
    while (Date.now() < until) {
      await page.goto(`${origin}/app`, { waitUntil: 'domcontentloaded' });
      if (page.url().startsWith(opOrigin)) { revoked = true; break; }
      await page.waitForTimeout(200);
    }
    result.revokedByBackchannel = revoked;
  } else if (scenario === 'denied') {
    const context = await newContext();
    const page = await login(context, 'bob', '/admin');
    const response = await page.goto(`${origin}/admin`, { waitUntil: 'domcontentloaded' });
    result.status = response.status();
    result.title = await page.title();
    result.text = await page.innerText('body');
    result.stillOnGateway = page.url().startsWith(origin);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
