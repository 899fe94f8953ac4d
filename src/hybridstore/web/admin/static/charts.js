/* Charts of the last hour (uPlot, shipped with the package): history from /admin/series, then live samples. */
(() => {
  "use strict";
  if (!window.uPlot) return;
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim() || "#888";
  const axis = { stroke: color("--muted"), grid: { stroke: color("--line"), width: 1 }, ticks: { stroke: color("--line") } };
  const SPECS = {
    latency: { series: [["p50", "--accent", (s) => s.p50_ms], ["p99", "--bad", (s) => s.p99_ms]] },
    throughput: { series: [["primary", "--ok", (s) => (s.writes || {}).primary], ["local", "--warn", (s) => (s.writes || {}).local], ["journal", "--bad", (s) => (s.writes || {}).journal]] },
    outbox: { series: [["outbox depth", "--accent", (s) => s.outbox_depth]] },
    sync: { series: [["pushed/s", "--ok", (s) => s.push_rate], ["pulled/s", "--accent", (s) => s.pull_rate]] },
  };
  const charts = [];
  function make(el, spec, samples) {
    const data = [samples.map((s) => s.t), ...spec.series.map(([, , get]) => samples.map((s) => get(s) ?? null))];
    const width = Math.max(240, el.clientWidth || 300);
    const plot = new uPlot({
      width, height: 200,
      series: [{}, ...spec.series.map(([label, c]) => ({ label, stroke: color(c), width: 2, spanGaps: true }))],
      axes: [axis, axis],
      scales: { x: { time: true } },
      legend: { show: true },
    }, data, el);
    charts.push({ el, spec, plot, data });
  }
  async function start() {
    let samples = [];
    try {
      const r = await fetch("/admin/series", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok) samples = (await r.json()).samples || [];
    } catch (e) { samples = []; }
    document.querySelectorAll("[data-chart]").forEach((el) => { const spec = SPECS[el.dataset.chart]; if (spec) make(el, spec, samples); });
    document.addEventListener("hs:sample", (ev) => {
      const s = ev.detail;
      charts.forEach((c) => {
        if (c.data[0].length && c.data[0][c.data[0].length - 1] >= s.t) return;
        c.data[0].push(s.t);
        c.spec.series.forEach(([, , get], i) => c.data[i + 1].push(get(s) ?? null));
        if (c.data[0].length > 1800) c.data.forEach((a) => a.shift());
        c.plot.setData(c.data);
      });
      document.querySelectorAll("[data-chart]").forEach((el) => { el.dataset.points = String((charts[0] || { data: [[]] }).data[0].length); });
    });
    window.addEventListener("resize", () => charts.forEach((c) => c.plot.setSize({ width: Math.max(240, c.el.clientWidth), height: 200 })));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
