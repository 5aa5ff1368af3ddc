// Transcription: a file or a microphone recording → /v1/audio/transcriptions (or /translations).
import { aliasTarget, fillSelect, modelsOf, request } from "./api.js";

const $ = (id) => document.getElementById(id);

let context;
let recorder = null;
let recorded = null; // the last recording, a Blob; a chosen file replaces it

export function modelsChanged(ctx) {
  const ids = modelsOf(ctx.models, ["transcription"]).map((m) => m.id);
  fillSelect($("transcription-model"), ids, aliasTarget(ctx.models, "whisper-1"));
}

function note(text) {
  document.querySelector('[data-role="recording"]').textContent = text;
}

async function toggleRecording() {
  const button = $("transcription-record");
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    context.showError(new Error("this browser cannot record here (the microphone needs https or localhost)"));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    context.showError(new Error(`no microphone: ${error.message}`));
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => event.data.size && chunks.push(event.data));
  recorder.addEventListener("stop", () => {
    stream.getTracks().forEach((track) => track.stop());
    recorded = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    recorder = null;
    button.setAttribute("aria-pressed", "false");
    $("transcription-file").value = "";
    note(`recorded ${(recorded.size / 1024).toFixed(1)} KiB: press Transcribe`);
  });
  recorder.start();
  button.setAttribute("aria-pressed", "true");
  note("recording… press Record again to stop");
}

function extensionOf(type) {
  if (type.includes("ogg")) return "ogg";
  if (type.includes("mp4")) return "m4a";
  return "webm";
}

async function transcribe() {
  const file = $("transcription-file").files[0];
  const audio = file || recorded;
  if (!audio) {
    context.showError(new Error("choose an audio file or record one first"));
    return;
  }
  context.showError(null);
  const translate = $("transcription-translate").checked;
  const form = new FormData();
  form.append("model", $("transcription-model").value);
  form.append("file", audio, file ? file.name : `recording.${extensionOf(audio.type)}`);
  form.append("response_format", "json");
  const output = document.querySelector('[data-role="transcript"]');
  const stats = document.querySelector('[data-role="transcription-stats"]');
  output.textContent = "…";
  stats.textContent = "";
  $("transcription-go").disabled = true;
  const started = performance.now();
  try {
    const path = translate ? "v1/audio/translations" : "v1/audio/transcriptions";
    const response = await request(path, { method: "POST", form });
    const translator = response.headers.get("X-Translation-Model");
    const body = await response.json();
    output.textContent = body.text || "(nothing heard)";
    const parts = [`${((performance.now() - started) / 1000).toFixed(2)} s`];
    if (body.usage && body.usage.seconds) parts.push(`${body.usage.seconds.toFixed(1)} s of audio`);
    if (translator) parts.push(`translated by ${translator}`);
    stats.textContent = parts.join(" · ");
  } catch (error) {
    output.textContent = "";
    context.showError(error);
  } finally {
    $("transcription-go").disabled = false;
    context.refreshStatus();
  }
}

export function init(ctx) {
  context = ctx;
  $("transcription-record").addEventListener("click", toggleRecording);
  $("transcription-go").addEventListener("click", transcribe);
  $("transcription-file").addEventListener("change", () => {
    recorded = null;
    note("");
  });
}
