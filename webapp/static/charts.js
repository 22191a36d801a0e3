// Charts: every figure.chart (templates/_charts.html) drawn from its JSON island with uPlot.
// A line per series with a legend; x as days ("days": ISO dates) or instants ("seconds": epoch
// seconds); the width follows the figure's box. Figures are drawn when the page loads and after
// every htmx swap; a figure swapped in again replaces its previous chart. The table stays for
// anyone without JavaScript or with a screen reader.
(function () {
  "use strict";

  const HEIGHT = 220;
  const COLORS = { sent: "#1f6feb", delivered: "#2e9e4f", read: "#8250df", failed: "#d1242f" };
  const OTHER_COLORS = ["#0969da", "#bf8700", "#1a7f37", "#cf222e", "#8250df", "#57606a"];

  const SECOND_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
  const DAY_STEPS = [86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400];
  const dayTick = (seconds) => new Date(seconds * 1000).toISOString().slice(5, 10);
  const timeTick = (zone) => (seconds) =>
    new Date(seconds * 1000).toLocaleTimeString([], { timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit" });

  const charts = new Map(); // figure id -> { figure, json, plot, observer }

  const whole = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US"));

  function colorOf(label, index) {
    return COLORS[String(label).toLowerCase()] || OTHER_COLORS[index % OTHER_COLORS.length];
  }

  function xValues(data) {
    if (data.kind === "days") return data.x.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
    return data.x.map(Number);
  }

  function xText(kind, zone) {
    if (kind === "days") return (u, value) => (value === null ? "—" : new Date(value * 1000).toISOString().slice(0, 10));
    return (u, value) => (value === null ? "—" : new Date(value * 1000).toLocaleString([], { timeZone: zone }));
  }

  // times read as the workspace's clock, like the table under the chart (not the browser's zone)
  function options(data, width, zone) {
    const days = data.kind === "days";
    return {
      width: width,
      height: HEIGHT,
      // a day is a date, not an instant: keep it in UTC so 2026-03-05 reads 3/5 in every zone
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), days ? "Etc/UTC" : zone),
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, Math.max(1, max || 0)] },
      },
      axes: [
        // ticks on whole seconds (or whole days), never uPlot's sub-second default labels like ":10.000"
        { incrs: days ? DAY_STEPS : SECOND_STEPS, values: (u, splits) => splits.map(days ? dayTick : timeTick(zone)) },
        { values: (u, splits) => splits.map((value) => (Number.isInteger(value) ? whole(value) : "")) },
      ],
      series: [
        { label: days ? "Day" : "Time", value: xText(data.kind, zone) },
        ...data.series.map((s, index) => ({
          label: s.label,
          stroke: colorOf(s.label, index),
          width: 2,
          value: (u, value) => whole(value),
          points: { show: data.x.length <= 31 },
        })),
      ],
      legend: { show: true },
    };
  }

  function forget(id) {
    const chart = charts.get(id);
    if (!chart) return;
    chart.observer.disconnect();
    chart.plot.destroy();
    charts.delete(id);
  }

  function draw(figure) {
    const island = figure.querySelector("script.chart-data");
    const canvas = figure.querySelector(".chart-canvas");
    if (!island || !canvas || !figure.isConnected || typeof uPlot === "undefined") return;
    const id = figure.id || "";
    const previous = charts.get(id);
    if (previous && previous.figure === figure && previous.json === island.textContent) return;
    forget(id);
    let data;
    try {
      data = JSON.parse(island.textContent);
    } catch (err) {
      return; // the table below still has the numbers
    }
    canvas.replaceChildren();
    const columns = [xValues(data), ...data.series.map((s) => s.values)];
    const zone = figure.dataset.zone || "UTC";
    const plot = new uPlot(options(data, Math.max(canvas.clientWidth, 200), zone), columns, canvas);
    const observer = new ResizeObserver(() => {
      const width = canvas.clientWidth;
      if (width > 0 && Math.abs(width - plot.width) > 1) plot.setSize({ width: width, height: HEIGHT });
    });
    observer.observe(canvas);
    charts.set(id, { figure: figure, json: island.textContent, plot: plot, observer: observer });
  }

  function drawWithin(root) {
    for (const [id, chart] of charts) if (!chart.figure.isConnected) forget(id);
    if (!root || !root.querySelectorAll) return;
    if (root.matches && root.matches("figure.chart")) draw(root);
    root.querySelectorAll("figure.chart").forEach(draw);
  }

  document.addEventListener("htmx:load", (event) => drawWithin(event.target));
  document.addEventListener("htmx:afterSettle", (event) => drawWithin(event.detail && event.detail.elt));
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => drawWithin(document));
  else drawWithin(document);
})();
