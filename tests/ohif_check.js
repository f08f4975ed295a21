// Opens a study in the OHIF viewer with headless Chromium, loads its SEG and opens the segmentation and measurement
// panels; prints what the page lists as one line of JSON and saves a screenshot.
// Usage: node ohif_check.js URL STUDY_UID SEG_SERIES_DESCRIPTION SCREENSHOT
const path = require('path');
const { chromium } = require(path.join(process.cwd(), 'node_modules', 'playwright-core'));

const [url, study, segDescription, screenshot] = process.argv.slice(2);
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'];

(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: FLAGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    await page.goto(`${url}/viewer?StudyInstanceUIDs=${study}`, { waitUntil: 'load' });
    await page.getByText('Skip all').click({ timeout: 60000 });  // the first-visit tour
    await page.getByText('Confirm and hide').click();
    const series = await page.locator('[data-cy="series-description-label"]').allInnerTexts();
    await page.getByText(segDescription).dblclick();
    await page.getByRole('button', { name: 'Yes' }).click({ timeout: 60000 });  // "open this segmentation?"
    await page.locator('[data-cy="panelSegmentation-btn"]').click();
    const rows = page.locator('[data-cy="data-row"]');
    await rows.first().waitFor({ timeout: 60000 });
    const segments = await rows.evaluateAll(list => list.map(row => ({
      number: row.children[1].innerText.trim(),
      label: row.querySelector('[data-cy="data-row-title"]').innerText.trim(),
      color: getComputedStyle(row.querySelector('[data-cy="data-row-colorhex"]')).backgroundColor,
    })));
    // OHIF's own statistics of each segment (shown on hover), its volume among them
    for (const segment of segments) {
      for (let attempt = 1; ; attempt++) {  // the statistics tooltip may miss a hover while OHIF is busy
        await page.mouse.move(5, 880);
        await rows.filter({ hasText: segment.label }).hover();
        try {
          await page.getByText('Voxel Count').waitFor({ timeout: 20000 });
          break;
        } catch (error) {
          if (attempt === 4) throw error;
        }
      }
      const text = await page.locator('body').innerText();
      const block = text.slice(text.lastIndexOf(segment.label));
      const match = block.match(/Volume\s*([\d.,]+)\s*mm/);
      segment.volume_mm3 = match ? Number(match[1].replace(/,/g, '')) : null;
      const voxels = block.match(/Voxel Count\s*([\d,]+)/);
      segment.voxels = voxels ? Number(voxels[1].replace(/,/g, '')) : null;
      await page.mouse.move(5, 880);
      await page.waitForTimeout(300);
    }
    // the middle of the kidneys, parenchyma hidden so that cortex and medulla show
    await page.locator('[data-cy="viewport-pane"]').first().click({ position: { x: 100, y: 700 } });
    for (let i = 0; i < 8; i++) { await page.keyboard.press('ArrowDown'); await page.waitForTimeout(150); }
    for (const side of ['Left', 'Right']) {
      const row = rows.filter({ hasText: `${side} renal parenchyma` });
      await row.hover();
      await row.locator('[data-cy="data-row-visibility-toggle"]').click();
    }
    await page.mouse.move(5, 880);
    await page.waitForTimeout(2000);
    await page.screenshot({ path: screenshot });
    await page.locator('[data-cy="trackedMeasurements-btn"]').click();
    await page.waitForTimeout(1000);
    const measurements = await page.locator('body').innerText();
    console.log(JSON.stringify({ series, segments, measurements: measurements.includes('No tracked measurements') ? [] : [measurements] }));
  } finally {
    await browser.close();
  }
})().catch(error => { console.error(error); process.exit(1); });
