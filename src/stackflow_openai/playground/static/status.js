// Device status from /ready (devices, loaded models, memory) and /metrics (queue depth), refreshed
// every few seconds while the page is visible.
import { authHeaders } from "./api.js";

const INTERVAL_MS = 5000;
let timer = null;

function mib(bytes) {
  return `${Math.round(bytes / 1048576)} MiB`;
}

// One gauge per device from Prometheus' text format, e.g. stackflow_openai_queue_depth{device="emu"} 0
function gauges(text, name) {
  const values = {};
  const pattern = new RegExp(`^${name}\\{device="([^"]*)"\\}\\s+(\\S+)$`, "gm");
  for (const match of text.matchAll(pattern)) values[match[1]] = Number(match[2]);
  return values;
}

function row(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function render(ready, queues) {
  const box = document.querySelector('[data-role="device-status"]');
  const blocks = (ready.devices || []).map((device) => {
    const list = document.createElement("dl");
    list.dataset.device = device.name;
    row(list, "device", `${device.name} (${device.state})`);
    row(list, "models", String(device.models));
    row(list, "loaded", device.loaded && device.loaded.length ? device.loaded.join(", ") : "none");
    if (device.memory) row(list, "memory", `${mib(device.memory.used)} of ${mib(device.memory.total)} used`);
    const queued = queues[device.name] ?? (device.units ? device.units.waiting : 0);
    row(list, "queue", `${queued} waiting, ${device.units ? device.units.busy : 0} busy`);
    return list;
  });
  if (!blocks.length) {
    const p = document.createElement("p");
    p.textContent = ready.status === "ready" ? "no devices (proxy models only)" : "not ready";
    blocks.push(p);
  }
  box.replaceChildren(...blocks);
}

export async function refresh() {
  const box = document.querySelector('[data-role="device-status"]');
  try {
    // /ready answers 503 with the same body while no device is up: read it either way.
    const ready = await (await fetch("ready", { headers: authHeaders() })).json();
    if (ready.error) throw new Error(ready.error.message); // e.g. 401 with auth.protect_health
    let queues = {};
    const metrics = await fetch("metrics", { headers: authHeaders() });
    if (metrics.ok) queues = gauges(await metrics.text(), "stackflow_openai_queue_depth");
    render(ready, queues);
  } catch (error) {
    box.textContent = `status unavailable: ${error.message}`;
  }
}

export function init() {
  document.getElementById("status-refresh").addEventListener("click", refresh);
  refresh();
  timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, INTERVAL_MS);
}

export function stop() {
  clearInterval(timer);
}
