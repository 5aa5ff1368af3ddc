// The playground's entry point: section tabs, the API key, the model lists, the error banner.
// Each section is a module with `init(context)`; to add one, add its <section data-section="Name"> to
// index.html and an entry here.
import { ApiError, apiKey, getJson, setApiKey } from "./api.js";
import * as chat from "./chat.js";
import * as speech from "./speech.js";
import * as transcription from "./transcription.js";
import * as voice from "./voice.js";
import * as status from "./status.js";

const SECTIONS = { chat, speech, transcription, voice };

const errorBox = document.querySelector('[data-role="error"]');

function showError(error) {
  if (!error) {
    errorBox.hidden = true;
    errorBox.textContent = "";
    return;
  }
  if (error.name === "AbortError") return;
  const text = error instanceof ApiError ? error.message : `Request failed: ${error.message || error}`;
  errorBox.textContent = text;
  errorBox.hidden = false;
}

function buildTabs() {
  const nav = document.querySelector("nav.tabs");
  const sections = [...document.querySelectorAll("section[data-section]")];
  const buttons = sections.map((section) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "tab");
    button.id = `tab-${section.id}`;
    button.setAttribute("aria-controls", section.id);
    button.textContent = section.dataset.section;
    section.setAttribute("role", "tabpanel");
    section.setAttribute("aria-labelledby", button.id);
    button.addEventListener("click", () => select(section.id));
    nav.append(button);
    return button;
  });
  function select(id) {
    sections.forEach((section, i) => {
      const chosen = section.id === id;
      section.hidden = !chosen;
      buttons[i].setAttribute("aria-selected", String(chosen));
      buttons[i].tabIndex = chosen ? 0 : -1;
    });
    if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  }
  const fromHash = location.hash.slice(1);
  select(sections.some((s) => s.id === fromHash) ? fromHash : sections[0].id);
}

async function loadModels(context) {
  try {
    const list = await getJson("v1/models");
    showError(null);
    context.models = list.data;
  } catch (error) {
    context.models = [];
    showError(error);
  }
  for (const section of Object.values(SECTIONS)) section.modelsChanged?.(context);
}

function start() {
  // refreshStatus: after a request, so that the panel shows what it loaded on the device at once.
  const context = { models: [], showError, refreshStatus: status.refresh };
  const keyInput = document.getElementById("api-key");
  keyInput.value = apiKey();
  document.getElementById("key-form").addEventListener("submit", (event) => event.preventDefault());
  keyInput.addEventListener("change", () => {
    setApiKey(keyInput.value.trim());
    loadModels(context);
    status.refresh();
  });
  buildTabs();
  for (const section of Object.values(SECTIONS)) section.init(context);
  status.init(context);
  loadModels(context);
}

start();
