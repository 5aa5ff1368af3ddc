// Speech: POST /v1/audio/speech and play the answer in an <audio> element while it streams
// (MediaSource for the formats the browser can append piece by piece, a finished blob otherwise).
import { aliasTarget, fillSelect, getJson, modelsOf, request } from "./api.js";

const $ = (id) => document.getElementById(id);
const MEDIA_TYPES = { mp3: "audio/mpeg", aac: "audio/aac", wav: "audio/wav", flac: "audio/flac", opus: "audio/ogg" };

let context;
let objectUrl = null;
let controller = null;

export function modelsChanged(ctx) {
  const ids = modelsOf(ctx.models, ["speech"]).map((m) => m.id);
  fillSelect($("speech-model"), ids, aliasTarget(ctx.models, "tts-1"));
  loadVoices();
}

async function loadVoices() {
  const model = $("speech-model").value;
  if (!model) {
    $("speech-voice").replaceChildren();
    return;
  }
  try {
    const list = await getJson(`v1/audio/voices?model=${encodeURIComponent(model)}`);
    fillSelect($("speech-voice"), list.voices.map((v) => v.id), "alloy");
  } catch (error) {
    context.showError(error);
  }
}

function canStream(format) {
  return format === "mp3" && "MediaSource" in window && MediaSource.isTypeSupported("audio/mpeg");
}

function resetAudio(audio) {
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = null;
}

// Appends each network chunk to a SourceBuffer as it arrives; playback starts with the first sentence.
async function playStreaming(response, audio, onBytes) {
  const source = new MediaSource();
  objectUrl = URL.createObjectURL(source);
  audio.src = objectUrl;
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const buffer = source.addSourceBuffer("audio/mpeg");
  const appended = () => new Promise((resolve) => buffer.addEventListener("updateend", resolve, { once: true }));
  const reader = response.body.getReader();
  let started = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onBytes(value.byteLength);
    buffer.appendBuffer(value);
    await appended();
    if (!started) {
      started = true;
      audio.play().catch(() => {}); // autoplay may be refused: the controls still play it
    }
  }
  if (source.readyState === "open") source.endOfStream();
}

async function playWhole(response, audio, format, onBytes) {
  const blob = await response.blob();
  onBytes(blob.size);
  objectUrl = URL.createObjectURL(new Blob([blob], { type: MEDIA_TYPES[format] || blob.type }));
  audio.src = objectUrl;
  audio.play().catch(() => {});
}

async function speak() {
  const text = $("speech-text").value.trim();
  if (!text) return;
  context.showError(null);
  if (controller) controller.abort();
  controller = new AbortController();
  const audio = $("speech-audio");
  const stats = document.querySelector('[data-role="speech-stats"]');
  const format = $("speech-format").value;
  resetAudio(audio);
  const started = performance.now();
  let first = 0;
  let bytes = 0;
  const onBytes = (n) => {
    if (!first) first = performance.now();
    bytes += n;
  };
  $("speech-speak").disabled = true;
  stats.textContent = "…";
  try {
    const response = await request("v1/audio/speech", {
      method: "POST",
      signal: controller.signal,
      json: { model: $("speech-model").value, voice: $("speech-voice").value, input: text, response_format: format },
    });
    if (canStream(format)) await playStreaming(response, audio, onBytes);
    else await playWhole(response, audio, format, onBytes);
    const firstAudio = ((first - started) / 1000).toFixed(2);
    stats.textContent = `${(bytes / 1024).toFixed(1)} KiB of ${format} · first audio after ${firstAudio} s`;
  } catch (error) {
    stats.textContent = "";
    context.showError(error);
  } finally {
    $("speech-speak").disabled = false;
    context.refreshStatus();
  }
}

export function init(ctx) {
  context = ctx;
  $("speech-speak").addEventListener("click", speak);
  $("speech-model").addEventListener("change", loadVoices);
}
