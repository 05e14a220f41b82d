// The GPU page's glue: draws what the daemon's event stream (page/events) sends, with uPlot for
// the charts. Every value also goes into the DOM as text (cards, chart captions, tables), and all
// text is set with textContent, never parsed as markup.
"use strict";
(() => {
  const CHARTS = [
    { id: "util", title: "Utilization", unit: "%", range: [0, 100],
      series: [["util_gpu", "GPU"], ["util_memory", "Memory"]] },
    { id: "memory", title: "Memory used", unit: "MiB", top: (c) => c.memory_total_mib,
      series: [["memory_used_mib", "Used"]] },
    { id: "power", title: "Power", unit: "W", limit: (c) => c.power_limit_w,
      series: [["power_w", "Draw"]] },
    { id: "temperature", title: "Temperature", unit: "°C", series: [["temperature_c", "GPU"]] },
    { id: "clocks", title: "Clocks", unit: "MHz",
      series: [["clock_sm_mhz", "SM"], ["clock_mem_mhz", "Memory"]] },
    { id: "pcie", title: "PCIe throughput", unit: "MB/s",
      series: [["pcie_rx_mbs", "RX"], ["pcie_tx_mbs", "TX"]] },
  ];
  const NOW = [
    ["util_gpu", "GPU utilization", "%"], ["util_memory", "Memory utilization", "%"],
    ["memory_used_mib", "Memory used", "MiB"], ["power_w", "Power", "W"],
    ["temperature_c", "Temperature", "°C"], ["clock_sm_mhz", "SM clock", "MHz"],
    ["clock_mem_mhz", "Memory clock", "MHz"], ["pcie_rx_mbs", "PCIe RX", "MB/s"],
    ["pcie_tx_mbs", "PCIe TX", "MB/s"],
  ];
  const COLORS = ["#2a7ab9", "#d9822b", "#888"];

  let meta = null; // interval_s, length, series
  let cards = new Map(); // GPU index -> {card, data, charts, section}
  let uuids = "";
  let lastT = 0;
  let inventory = { driver: null, cuda: null, gpus: [] };

  const $ = (id) => document.getElementById(id);
  function el(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
    for (const kid of kids) node.append(kid);
    return node;
  }
  const na = (v) => v === null || v === undefined;
  const fmt = (v, unit) => (na(v) ? "N/A" : `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`);
  const compact = (v) => (Math.abs(v) >= 10000 ? `${+(v / 1000).toFixed(1)}k` : `${v}`);
  const mib = (b) => (na(b) ? "N/A" : `${(b / 1048576).toFixed(1)} MiB`);
  const when = (t) => (na(t) ? "N/A" : new Date(t * 1000).toLocaleString());

  // -- GPU sections ------------------------------------------------------------------------
  function fact(dl, label, value) {
    dl.append(el("dt", { text: label }), el("dd", { text: na(value) ? "N/A" : String(value) }));
  }

  function buildGpu(card, history) {
    const section = el("section", { class: "gpu", id: `gpu-${card.index}`,
      "aria-labelledby": `gpu-${card.index}-h`, dataset: { gpu: card.index, uuid: card.uuid } });
    section.append(el("h2", { id: `gpu-${card.index}-h`,
      text: `GPU ${card.index} · ${card.model || "unknown model"}` }));
    const facts = el("dl", { class: "facts" });
    fact(facts, "UUID", card.uuid);
    fact(facts, "Bus ID", card.bus_id);
    fact(facts, "Device", card.path);
    fact(facts, "Driver", inventory.driver);
    fact(facts, "CUDA", inventory.cuda);
    fact(facts, "Architecture", card.family && `${card.family} (${card.arch})`);
    fact(facts, "Memory", na(card.memory_total_mib) ? null : `${card.memory_total_mib} MiB`);
    fact(facts, "Power limit", na(card.power_limit_w) ? null : `${card.power_limit_w} W`);
    facts.append(el("dt", { text: "Health" }), el("dd", { class: "health", text: "not reported" }));
    const now = el("dl", { class: "now", "aria-label": `GPU ${card.index} now` });
    for (const [field, label, unit] of NOW) {
      const value = el("span", { class: "v", text: "N/A" });
      now.append(el("dt", { text: label }),
        el("dd", { dataset: { field } }, value, el("span", { class: "u", text: ` ${unit}` })));
    }
    const grid = el("div", { class: "charts" });
    section.append(el("div", { class: "card" }, facts, now), grid);
    $("gpus").append(section);
    const data = { t: [], s: {} };
    for (const name of meta.series.slice(1)) data.s[name] = [];
    const series = history || {};
    for (let i = 0; i < (series.t || []).length; i++) {
      data.t.push(series.t[i]);
      for (const name of meta.series.slice(1)) data.s[name].push(series[name][i]);
    }
    const entry = { card, data, charts: [], section };
    for (const spec of CHARTS) entry.charts.push(buildChart(grid, entry, spec));
    return entry;
  }

  // The charts always span the last 15 minutes (the history's length), ending at the latest
  // sample: a pause in watching shows as a gap, a fresh daemon as a line that starts late.
  function windowRange() {
    const span = meta.length * meta.interval_s;
    const end = lastT || Date.now() / 1000;
    return [end - span, end];
  }

  function chartData(entry, spec) {
    const cols = [entry.data.t, ...spec.series.map(([name]) => entry.data.s[name])];
    const limit = spec.limit && spec.limit(entry.card);
    if (!na(limit)) cols.push(entry.data.t.map(() => limit));
    return cols;
  }

  // Each chart is as wide as its box, whatever changes that: a window resize, or the page's
  // scrollbar appearing once the content is taller than the window (no resize event then; the
  // chart's right edge was cut off in Firefox).
  const plotWidth = (plot) => Math.max(plot.clientWidth, 200);
  const charts = new WeakMap(); // plot box -> its uPlot
  const resizes = new ResizeObserver((observed) => {
    for (const { target } of observed) {
      const chart = charts.get(target);
      if (chart && target.clientWidth && chart.width !== plotWidth(target)) {
        chart.setSize({ width: plotWidth(target), height: 150 });
      }
    }
  });

  function buildChart(grid, entry, spec) {
    const caption = el("figcaption");
    const plot = el("div", { class: "plot", "aria-hidden": "true" });
    const figure = el("figure", { tabindex: "0", dataset: { chart: spec.id } }, caption, plot);
    grid.append(figure);
    const series = [{}, ...spec.series.map(([, label], k) => ({
      label, stroke: COLORS[k], width: 1.5, value: (u, v) => fmt(v, spec.unit) }))];
    const limit = spec.limit && spec.limit(entry.card);
    if (!na(limit)) series.push({ label: "Limit", stroke: COLORS[2], dash: [4, 4], width: 1 });
    const top = spec.top && spec.top(entry.card);
    const y = spec.range ? { range: spec.range }
      : { range: (u, lo, hi) => [0, Math.max(hi || 0, top || 0, limit || 0, 1)] };
    const chart = new uPlot({
      width: plotWidth(plot), height: 150,
      series, scales: { x: { time: true, range: () => windowRange() }, y }, legend: { show: true, live: false },
      axes: [{ size: 30 }, { size: 56, values: (u, ticks) => ticks.map(compact) }],
      cursor: { drag: { x: false, y: false } },
    }, chartData(entry, spec), plot);
    charts.set(plot, chart);
    resizes.observe(plot);
    return { spec, chart, caption, figure, plot };
  }

  function captionText(entry, chart) {
    const { spec } = chart;
    const parts = spec.series.map(([name, label]) => {
      const values = entry.data.s[name].filter((v) => !na(v));
      const latest = values.length ? values[values.length - 1] : null;
      const peak = values.length ? Math.max(...values) : null;
      return `${label} ${fmt(latest, spec.unit)} (15-min max ${fmt(peak, spec.unit)})`;
    });
    const limit = spec.limit && spec.limit(entry.card);
    if (!na(limit)) parts.push(`limit ${fmt(limit, spec.unit)}`);
    return `${spec.title}: ${parts.join(", ")}`;
  }

  function refreshCharts(entry) {
    for (const chart of entry.charts) {
      chart.chart.setData(chartData(entry, chart.spec));
      const text = captionText(entry, chart);
      chart.caption.textContent = text;
      chart.figure.setAttribute("aria-label", `GPU ${entry.card.index} ${text}`);
    }
  }

  // -- events ------------------------------------------------------------------------------

  function onHello(state) {
    performance.mark("nvp-hello"); // bench/bench_page.py reads these marks
    meta = { interval_s: state.interval_s, length: state.length, series: state.series };
    $("version").textContent = `nvidia-docker-plugin ${state.version}`;
    uuids = "";
    // The history already holds the hello's sample: it updates the numbers, not the charts.
    if (state.sample) lastT = Math.max(lastT, state.sample.t);
    onPanels(state, state.history);
    onSample(state.sample);
    performance.mark("nvp-drawn");
  }

  function rebuildGpus(state, history) {
    for (const entry of cards.values()) {
      entry.charts.forEach((c) => { resizes.unobserve(c.plot); c.chart.destroy(); });
    }
    $("gpus").replaceChildren();
    $("nav").querySelectorAll(".gpu-link").forEach((n) => n.remove());
    cards = new Map();
    const gpus = (state.inventory && state.inventory.gpus) || [];
    for (const card of gpus) {
      const entry = buildGpu(card, history && history[String(card.index)]);
      cards.set(card.index, entry);
      $("nav").insertBefore(el("li", { class: "gpu-link" },
        el("a", { href: `#gpu-${card.index}`, text: `GPU ${card.index}` })),
        $("nav").querySelector("li:not(.gpu-link)"));
      refreshCharts(entry);
    }
  }

  function onPanels(state, history) {
    inventory = state.inventory || { driver: null, cuda: null, gpus: [] };
    const ids = (inventory.gpus || []).map((g) => g.uuid).join(",");
    if (ids !== uuids || history) {
      uuids = ids;
      rebuildGpus(state, history);
    }
    $("host-summary").textContent = state.available
      ? `· ${cards.size} · driver ${inventory.driver} · CUDA ${inventory.cuda || "N/A"}` : "";
    const problem = $("unavailable");
    problem.hidden = state.available;
    problem.textContent = state.available ? "" : `No GPUs: ${state.reason || "NVML is unavailable"}`;
    $("containers-note").textContent = state.attribution ? ""
      : "Processes as NVML reports them; this daemon does not map them to containers.";
    showVolumes(state.volumes);
    showCdi(state.cdi);
    showDoctor(state.doctor);
  }

  function showHealth(health) {
    const byUuid = new Map((health || []).map((h) => [h.uuid, h]));
    for (const entry of cards.values()) {
      const cell = entry.section.querySelector(".health");
      const h = byUuid.get(entry.card.uuid);
      cell.textContent = h ? `${h.state}${h.reason ? `: ${h.reason}` : ""} (since ${when(h.since)})`
        : "not watched by this daemon";
      cell.dataset.state = h ? h.state : "unknown";
    }
  }

  function onSample(sample) {
    if (!sample || !meta) return;
    $("unavailable").hidden = !sample.error;
    if (sample.error) $("unavailable").textContent = `No GPU readings: ${sample.error}`;
    const fresh = sample.t > lastT;
    lastT = Math.max(lastT, sample.t);
    const keepAfter = sample.t - meta.length * meta.interval_s;
    for (const reading of sample.gpus) {
      const entry = cards.get(reading.index);
      if (!entry) continue;
      for (const [field] of NOW) {
        entry.section.querySelector(`[data-field="${field}"] .v`).textContent =
          na(reading[field]) ? "N/A" : String(reading[field]);
      }
      const { data } = entry;
      if (fresh && (!data.t.length || reading.t > data.t[data.t.length - 1])) {
        data.t.push(reading.t);
        for (const name of meta.series.slice(1)) data.s[name].push(reading[name]);
        while (data.t.length && data.t[0] < keepAfter) {
          data.t.shift();
          for (const name of meta.series.slice(1)) data.s[name].shift();
        }
      }
      refreshCharts(entry);
    }
    showHealth(sample.health);
    showProcesses(sample);
  }

  function showProcesses(sample) {
    const rows = [];
    for (const reading of sample.gpus) {
      for (const p of reading.processes) {
        const c = p.container;
        rows.push(el("tr", { dataset: { gpu: reading.index, pid: p.pid } },
          el("td", { text: `GPU ${reading.index}` }),
          el("td", { class: "container", text: c ? `${c.name || c.runtime} (${c.id.slice(0, 12)})` : "host" }),
          el("td", { text: String(p.pid) }), el("td", { text: p.name || "?" }),
          el("td", { text: fmt(p.memory_used_mib, "MiB") }),
          el("td", { text: when(p.since) })));
      }
    }
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", text: "No processes on any GPU." })));
    $("containers-rows").replaceChildren(...rows);
  }

  function showVolumes(volumes) {
    if (!volumes || volumes.error) {
      $("volumes-note").textContent = volumes ? `Cannot list the volumes: ${volumes.error}` : "";
      $("volumes-rows").replaceChildren();
      return;
    }
    $("volumes-note").textContent = `In ${volumes.dir}; this driver: ${volumes.driver || "none found"}.`;
    $("volumes-rows").replaceChildren(...volumes.volumes.map((v) => el("tr",
      { dataset: { volume: v.name } },
      el("th", { scope: "row", text: v.name }),
      el("td", { text: `${v.built ? "built" : "not built yet"}${v.current ? "" : " (another driver: stale)"}` }),
      el("td", { text: na(v.files) ? "—" : String(v.files) }), el("td", { text: mib(v.bytes) }),
      el("td", { text: String(v.mounts) }), el("td", { text: v.created || "—" }))));
  }

  function showCdi(cdi) {
    const box = $("cdi");
    box.hidden = !cdi; // this daemon keeps no CDI spec
    if (!cdi) return;
    const where = cdi.path || "not written to disk (--cdi-dir '')";
    box.replaceChildren(el("h3", { text: "CDI spec" }), el("p", {
      text: cdi.error ? `${where}: no spec: ${cdi.error}`
        : `${where}: cdiVersion ${cdi.version}, kind ${cdi.kind}, ${cdi.devices.length} devices `
          + `(${cdi.devices.join(", ")})${cdi.written_at ? `, written ${when(cdi.written_at)}` : ""}`,
    }));
  }

  function showDoctor(doctor) {
    const list = $("doctor-checks");
    if (!doctor || doctor.state === "off") {
      $("doctor-note").textContent = "Doctor's checks are not run by this daemon.";
      list.replaceChildren();
      return;
    }
    $("doctor-note").textContent = (doctor.checks ? `Checked ${when(doctor.checked_at)}` : "Checking…")
      + (doctor.state === "running" && doctor.checks ? "; checking again…" : "")
      + (doctor.error ? `; the last run failed: ${doctor.error}` : "");
    list.replaceChildren(...(doctor.checks || []).map((c) => el("li",
      { class: `check ${c.status.toLowerCase()}`, dataset: { check: c.check } },
      el("strong", { text: `${c.status} ` }), el("span", { text: `${c.check}: ${c.detail}` }),
      ...(c.fix ? [el("div", { class: "fix", text: `Fix: ${c.fix}` })] : []))));
  }

  // -- wiring ------------------------------------------------------------------------------
  const stream = new EventSource("page/events");
  const connection = $("connection");
  stream.addEventListener("open", () => { connection.textContent = "Live: updated every second"; });
  stream.addEventListener("error", () => { connection.textContent = "Disconnected; reconnecting…"; });
  stream.addEventListener("hello", (e) => onHello(JSON.parse(e.data)));
  stream.addEventListener("sample", (e) => onSample(JSON.parse(e.data)));
  stream.addEventListener("panels", (e) => onPanels(JSON.parse(e.data), null));
})();
