// Loads torhaus's status page in Debian's headless chromium, checks it for the texts given,
// checks it fits a phone's width, and saves a screenshot.
// Usage: node status-page.mjs URL SCREENSHOT.png TEXT...
import { chromium } from 'playwright-core';

const [url, screenshot, ...expected] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // A phone: 390 CSS pixels wide, touch, high density.
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  const page = await context.newPage();
  const external = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(url)) external.push(request.url());
  });
  const response = await page.goto(url, { waitUntil: 'load' });
  if (!response || response.status() !== 200) throw new Error(`status ${response && response.status()}`);
  const text = await page.innerText('body');
  const missing = expected.filter((t) => !text.includes(t));
  if (missing.length) throw new Error(`missing on the page: ${JSON.stringify(missing)}\n${text}`);
  if (external.length) throw new Error(`the page fetched other resources: ${external}`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the page is ${overflow}px wider than the phone's screen`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ title: await page.title(), screenshot }));
} finally {
  await browser.close();
}
