// Talking to the gateway: the API key, JSON and SSE requests, OpenAI-shaped errors.
// URLs are relative ("v1/..."), so the page also works behind a reverse proxy under a path prefix.

const KEY_STORAGE = "stackflow-playground.api-key";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The gateway answers every error as {"error": {"message", "type", "param", "code"}}.
async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (_) {
    /* not JSON: keep the status line */
  }
  return new ApiError(message, response.status, code);
}

export async function request(path, { method = "GET", json, form, signal, accept } = {}) {
  const headers = authHeaders(accept ? { Accept: accept } : {});
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  const response = await fetch(path, { method, headers, body, signal });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

// Server-sent events of a streamed completion: calls onEvent(object) per `data:` line until [DONE].
// An event carrying `error` (a failure after the stream started) becomes an ApiError.
export async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(event.error.message, 200, event.error.code);
        onEvent(event);
      }
    }
  }
}

// /v1/models with the gateway's `stackflow` field: real models (not aliases) of the given kinds.
export function modelsOf(models, kinds) {
  return models.filter((m) => m.stackflow && !m.stackflow.alias_of && kinds.includes(m.stackflow.kind));
}

// The model a hard-coded client name (e.g. gpt-4o-mini) stands for: a sensible default choice.
export function aliasTarget(models, alias) {
  const entry = models.find((m) => m.id === alias);
  return entry && entry.stackflow ? entry.stackflow.alias_of : null;
}

export function fillSelect(select, ids, preferred) {
  const previous = select.value;
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  const wanted = [previous, preferred].find((id) => id && ids.includes(id));
  if (wanted) select.value = wanted;
}
