// Chat: streamed replies with Stop, the conversation kept (also across reloads) until cleared,
// time to first token and tokens/s per reply, images for vision models.
import { aliasTarget, fillSelect, modelsOf, readEvents, request } from "./api.js";

const STORAGE = "stackflow-playground.conversation";
const $ = (id) => document.getElementById(id);

let context;
let conversation = []; // [{role, text, images: [dataURL]}]; images are not stored across reloads
let pendingImages = [];
let controller = null;

function visionSelected() {
  const model = context.models.find((m) => m.id === $("chat-model").value);
  return Boolean(model && model.stackflow && model.stackflow.kind === "vision");
}

export function modelsChanged(ctx) {
  const chatModels = modelsOf(ctx.models, ["chat", "vision"]).map((m) => m.id);
  fillSelect($("chat-model"), chatModels, aliasTarget(ctx.models, "gpt-4o-mini"));
  updateAttach();
}

function updateAttach() {
  const vision = visionSelected();
  $("chat-attach").hidden = !vision;
  if (!vision) clearAttachments();
}

function clearAttachments() {
  pendingImages = [];
  $("chat-image").value = "";
  document.querySelector('[data-role="attachments"]').replaceChildren();
}

function save() {
  const texts = conversation.map(({ role, text }) => ({ role, text }));
  localStorage.setItem(STORAGE, JSON.stringify(texts));
}

function restore() {
  try {
    conversation = (JSON.parse(localStorage.getItem(STORAGE)) || []).map((m) => ({ ...m, images: [] }));
  } catch (_) {
    conversation = [];
  }
  for (const message of conversation) {
    const item = addBubble(message.role, message.text, []);
    if (message.role === "assistant") item.stats.textContent = "(earlier reply)";
  }
}

function addBubble(role, text, images) {
  const li = document.createElement("li");
  li.className = role;
  const body = document.createElement("div");
  body.dataset.role = role; // replies stream into data-role="assistant"
  body.textContent = text;
  for (const url of images) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "attached image";
    li.append(img);
  }
  li.append(body);
  const stats = document.createElement("p");
  stats.className = "stats";
  stats.dataset.role = "stats";
  if (role === "assistant") li.append(stats);
  const list = document.querySelector('[data-role="conversation"]');
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return { body, stats, list };
}

// OpenAI's message shape: plain text, or text plus image parts for a vision model.
function apiMessages() {
  return conversation.map(({ role, text, images }) => {
    if (!images || !images.length) return { role, content: text };
    const parts = [{ type: "text", text }];
    for (const url of images) parts.push({ type: "image_url", image_url: { url } });
    return { role, content: parts };
  });
}

function describe(stats, { started, firstAt, endedAt, tokens, reason, dropped, stopped }) {
  const parts = [];
  if (firstAt) parts.push(`TTFT ${((firstAt - started) / 1000).toFixed(2)} s`);
  const seconds = firstAt && endedAt ? (endedAt - firstAt) / 1000 : 0;
  if (tokens) parts.push(`${tokens} tokens`);
  if (tokens > 1 && seconds > 0) parts.push(`${((tokens - 1) / seconds).toFixed(1)} tokens/s`);
  if (stopped) parts.push("stopped");
  else if (reason === "length") parts.push("cut at the length limit");
  if (dropped) parts.push(`${dropped} earlier messages left out to fit the model's window`);
  stats.textContent = parts.join(" · ");
}

async function send(event) {
  event.preventDefault();
  const input = $("chat-message");
  const text = input.value.trim();
  if (!text || controller) return;
  context.showError(null);
  const images = pendingImages;
  conversation.push({ role: "user", text, images });
  addBubble("user", text, images);
  input.value = "";
  clearAttachments();
  save();
  const reply = addBubble("assistant", "", []);
  const run = { started: performance.now(), firstAt: 0, endedAt: 0, tokens: 0, reason: null };
  controller = new AbortController();
  setBusy(true);
  let answer = "";
  try {
    const response = await request("v1/chat/completions", {
      method: "POST",
      signal: controller.signal,
      json: {
        model: $("chat-model").value,
        messages: apiMessages(),
        stream: true,
        stream_options: { include_usage: true },
      },
    });
    run.dropped = Number(response.headers.get("X-Dropped-Messages") || 0);
    let deltas = 0;
    await readEvents(response, (chunk) => {
      if (chunk.usage) run.tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (!run.firstAt) run.firstAt = performance.now();
          answer += piece;
          deltas += 1;
          reply.body.textContent = answer;
          reply.list.scrollTop = reply.list.scrollHeight;
        }
        if (choice.finish_reason) run.reason = choice.finish_reason;
      }
      run.endedAt = performance.now();
      if (!run.tokens) run.tokens = deltas; // a server without usage: deltas as a lower bound
    });
  } catch (error) {
    if (error.name === "AbortError") run.stopped = true;
    else context.showError(error);
  } finally {
    run.endedAt = run.endedAt || performance.now();
    describe(reply.stats, run);
    if (answer) conversation.push({ role: "assistant", text: answer, images: [] });
    else if (!run.stopped) reply.body.textContent = "(no reply)";
    save();
    controller = null;
    setBusy(false);
    context.refreshStatus();
  }
}

function setBusy(busy) {
  $("chat-send").disabled = busy;
  $("chat-stop").disabled = !busy;
}

function attach() {
  const files = [...$("chat-image").files];
  const box = document.querySelector('[data-role="attachments"]');
  for (const file of files) {
    const reader = new FileReader();
    reader.onload = () => {
      pendingImages.push(reader.result);
      const img = document.createElement("img");
      img.src = reader.result;
      img.alt = file.name;
      box.append(img);
    };
    reader.readAsDataURL(file);
  }
}

export function init(ctx) {
  context = ctx;
  restore();
  $("chat-form").addEventListener("submit", send);
  $("chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => controller && controller.abort());
  $("chat-model").addEventListener("change", updateAttach);
  $("chat-image").addEventListener("change", attach);
  $("chat-clear").addEventListener("click", () => {
    if (controller) controller.abort();
    conversation = [];
    save();
    document.querySelector('[data-role="conversation"]').replaceChildren();
  });
}
