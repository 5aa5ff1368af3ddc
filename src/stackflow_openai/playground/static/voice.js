// Voice: a spoken conversation over the Realtime API (WebSocket /v1/realtime). The microphone is captured
// at 24 kHz (the API's pcm16 rate) by an AudioWorklet and sent in 100 ms pieces; the gateway detects the
// end of each turn, transcribes it, answers and speaks; the answer's audio is queued for playback and
// cut off when the user starts talking again (barge-in).
import { apiKey, fillSelect, modelsOf, aliasTarget } from "./api.js";

const $ = (id) => document.getElementById(id);
const RATE = 24000;
const SEND_SAMPLES = RATE / 10;

let context;
let session = null; // { socket, audio, stream, node, pending, playHead, playing, turnEnded }

export function modelsChanged(ctx) {
  const ids = modelsOf(ctx.models, ["chat"]).map((m) => m.id);
  fillSelect($("voice-model"), ids, aliasTarget(ctx.models, "gpt-4o-mini"));
}

function line(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.dataset.role = `voice-${role}`;
  item.textContent = text;
  document.querySelector('[data-role="voice-transcript"]').append(item);
  return item;
}

function state(text) {
  document.querySelector('[data-role="voice-state"]').textContent = text;
}

function socketUrl(model) {
  const base = new URL("v1/realtime", location.href);
  base.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  base.searchParams.set("model", model);
  return base.toString();
}

function toBase64(float32) {
  const pcm = new Int16Array(float32.length);
  for (let i = 0; i < float32.length; i++) pcm[i] = Math.max(-1, Math.min(1, float32[i])) * 0x7fff;
  let binary = "";
  const bytes = new Uint8Array(pcm.buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function play(s, base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!pcm.length) return;
  const buffer = s.audio.createBuffer(1, pcm.length, RATE);
  const samples = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 0x8000;
  const source = s.audio.createBufferSource();
  source.buffer = buffer;
  source.connect(s.audio.destination);
  const at = Math.max(s.audio.currentTime, s.playHead);
  source.start(at);
  s.playHead = at + buffer.duration;
  s.playing.add(source);
  source.addEventListener("ended", () => s.playing.delete(source));
}

function silence(s) {
  for (const source of s.playing) source.stop();
  s.playing.clear();
  s.playHead = 0;
}

function onEvent(s, event) {
  switch (event.type) {
    case "session.created":
      s.socket.send(JSON.stringify({ type: "session.update", session: { type: "realtime",
        audio: { input: { transcription: { model: "whisper-1" } } } } }));
      state("listening: speak");
      break;
    case "input_audio_buffer.speech_started":
      silence(s); // barge-in: the gateway cancels the answer, the page stops playing it
      state("hearing you…");
      break;
    case "input_audio_buffer.speech_stopped":
      s.turnEnded = performance.now();
      state("thinking…");
      break;
    case "conversation.item.input_audio_transcription.completed":
      line("user", event.transcript || "(nothing heard)");
      break;
    case "response.output_audio_transcript.delta":
      if (!s.answer) s.answer = line("assistant", "");
      s.answer.textContent += event.delta;
      break;
    case "response.output_audio.delta":
      if (s.turnEnded) {
        const ms = Math.round(performance.now() - s.turnEnded);
        document.querySelector('[data-role="voice-stats"]').textContent = `first audio ${ms} ms after you stopped`;
        s.turnEnded = 0;
      }
      play(s, event.delta);
      state("speaking");
      break;
    case "response.done":
      s.answer = null;
      state("listening: speak");
      break;
    case "error":
      context.showError(new Error(event.error.message));
      break;
  }
}

async function start() {
  context.showError(null);
  const model = $("voice-model").value;
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    context.showError(new Error("this browser cannot capture audio here (the microphone needs https or localhost)"));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  } catch (error) {
    context.showError(new Error(`no microphone: ${error.message}`));
    return;
  }
  const audio = new AudioContext({ sampleRate: RATE });
  await audio.audioWorklet.addModule("playground/voice-capture.js");
  const node = new AudioWorkletNode(audio, "voice-capture");
  const mute = audio.createGain();
  mute.gain.value = 0; // the worklet must be pulled, but the user must not hear their own microphone
  audio.createMediaStreamSource(stream).connect(node).connect(mute).connect(audio.destination);
  const key = apiKey();
  // Browsers cannot set headers on a WebSocket: the key rides in a subprotocol, as OpenAI accepts it.
  const protocols = key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"];
  const socket = new WebSocket(socketUrl(model), protocols);
  const s = { socket, audio, stream, node, pending: [], pendingLength: 0, playHead: 0, playing: new Set() };
  session = s;
  node.port.onmessage = ({ data }) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    s.pending.push(data);
    s.pendingLength += data.length;
    if (s.pendingLength < SEND_SAMPLES) return;
    const joined = new Float32Array(s.pendingLength);
    let at = 0;
    for (const block of s.pending) { joined.set(block, at); at += block.length; }
    s.pending = [];
    s.pendingLength = 0;
    socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: toBase64(joined) }));
  };
  socket.addEventListener("message", (message) => onEvent(s, JSON.parse(message.data)));
  socket.addEventListener("close", (event) => {
    if (session === s) stop(event.code === 1000 || event.code === 1005 ? "" : `closed (${event.code})`);
  });
  socket.addEventListener("error", () => context.showError(new Error("the voice connection failed")));
  $("voice-start").setAttribute("aria-pressed", "true");
  $("voice-start").textContent = "Stop conversation";
  state("connecting…");
}

function stop(reason = "") {
  const s = session;
  session = null;
  if (!s) return;
  silence(s);
  s.stream.getTracks().forEach((track) => track.stop());
  s.audio.close();
  if (s.socket.readyState <= WebSocket.OPEN) s.socket.close(1000);
  $("voice-start").setAttribute("aria-pressed", "false");
  $("voice-start").textContent = "Start conversation";
  state(reason || "stopped");
  context.refreshStatus();
}

export function init(ctx) {
  context = ctx;
  $("voice-start").addEventListener("click", () => (session ? stop() : start()));
  $("voice-clear").addEventListener("click", () => {
    document.querySelector('[data-role="voice-transcript"]').replaceChildren();
  });
}
