// A run's live charts, the comparison of runs and a canary's two sides (uses uPlot and ui.js).
"use strict";

// Charts (uPlot, served by the appliance). One chart per metric; x is the step.
function lineChart(target, series) {
  const width = Math.max(target.clientWidth || 0, 320);
  return new uPlot({
    width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, { size: 64 }],
    series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: true }))],
  }, [[], ...series.map(() => [])], target);
}

const COLORS = ["#0b5cad", "#c05a00", "#1d6b34", "#7a3ea1", "#a4141b", "#00707a"];

// A running (or finished) run's page: every event of the run from the start, then live, over
// server-sent events; each step lands on the charts as it arrives.
function setUpLiveRun(section) {
  const charts = {
    loss: lineChart(section.querySelector('[data-chart="loss"]'),
      [{ label: "loss", color: COLORS[0] }, { label: "eval loss", color: COLORS[1] }]),
    learning_rate: lineChart(section.querySelector('[data-chart="learning_rate"]'), [{ label: "learning rate", color: COLORS[2] }]),
    tokens_per_second: lineChart(section.querySelector('[data-chart="tokens_per_second"]'), [{ label: "tokens/s", color: COLORS[3] }]),
  };
  const steps = [], loss = [], evalLoss = [], lr = [], tps = [];
  const text = section.querySelector("[data-progress-text]");
  const stateLabel = document.querySelector("[data-run-status]");
  const stage = section.dataset.stage;
  let pending = false;
  const redraw = () => {
    pending = false;
    charts.loss.setData([steps, loss, evalLoss]);
    charts.learning_rate.setData([steps, lr]);
    charts.tokens_per_second.setData([steps, tps]);
  };
  const later = () => { if (!pending) { pending = true; requestAnimationFrame(redraw); } };
  // A step seen again (trained again after a resume from an earlier checkpoint) replaces its values.
  const index = new Map();
  const at = (step) => {
    if (!index.has(step)) {
      index.set(step, steps.length);
      steps.push(step); loss.push(null); evalLoss.push(null); lr.push(null); tps.push(null);
    }
    return index.get(step);
  };
  const source = new EventSource("/api/runs/" + section.dataset.liveRun + "/events");
  source.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    if (d.stage !== stage) return;
    const i = at(d.step);
    loss[i] = d.loss; lr[i] = d.learning_rate; tps[i] = d.tokens_per_second;
    const left = d.step ? (d.total_steps - d.step) * d.elapsed_s / d.step : 0;
    text.textContent = "Step " + d.step + " of " + d.total_steps + " · loss " + d.loss.toFixed(4) +
      " · " + Math.round(d.tokens_per_second) + " tokens/s · about " + Math.ceil(left) + " s left";
    text.dataset.step = d.step;
    later();
  });
  source.addEventListener("eval", (e) => {
    const d = JSON.parse(e.data);
    if (d.stage !== stage) return;
    evalLoss[at(d.step)] = d.eval_loss;
    later();
  });
  source.addEventListener("status", (e) => { if (stateLabel) stateLabel.textContent = JSON.parse(e.data).status; });
  source.addEventListener("end", (e) => {
    source.close();
    if (stateLabel) stateLabel.textContent = JSON.parse(e.data).status;
    if (steps.length) text.textContent = text.textContent.replace(/ · about \d+ s left$/, "") + " · finished";
    // The run ended while the page was open: its stages, outputs and checkpoints changed too.
    if (section.dataset.finished === "false") window.location.reload();
  });
}

// Several runs' recorded curves on one chart per metric.
function setUpCompare(holder) {
  const curves = JSON.parse(holder.dataset.curves);
  const ids = Object.keys(curves);
  for (const metric of ["loss", "eval_loss"]) {
    const target = holder.querySelector('[data-chart="' + metric + '"]');
    const steps = [...new Set(ids.flatMap((id) => (curves[id][metric] || []).map((p) => p[0])))].sort((a, b) => a - b);
    const chart = lineChart(target, ids.map((id, n) => ({ label: id, color: COLORS[n % COLORS.length] })));
    chart.setData([steps, ...ids.map((id) => {
      const values = new Map((curves[id][metric] || []).map((p) => [p[0], p[1]]));
      return steps.map((s) => (values.has(s) ? values.get(s) : null));
    })]);
  }
}

// A canary's two sides: the latency of each side's answers in the order answered.
function setUpCanary(target) {
  const series = JSON.parse(target.dataset.series);
  const sides = ["champion", "candidate"];
  const longest = Math.max(1, ...sides.map((s) => series[s].length));
  const chart = new uPlot({
    width: Math.max(target.clientWidth || 0, 320), height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "answer" }, { label: "ms", size: 64 }],
    series: [{ label: "answer" }, ...sides.map((s, n) => ({ label: s, stroke: COLORS[n], width: 2, spanGaps: true }))],
  }, [[], ...sides.map(() => [])], target);
  const x = Array.from({ length: longest }, (_, i) => i + 1);
  chart.setData([x, ...sides.map((s) => x.map((i) => (i <= series[s].length ? series[s][i - 1] : null)))]);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-run]").forEach(setUpLiveRun);
  document.querySelectorAll("[data-compare-charts]").forEach(setUpCompare);
  document.querySelectorAll("[data-canary-chart]").forEach(setUpCanary);
});
