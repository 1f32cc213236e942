// The farm's JSON API as the page uses it: reads, and steering with the dashboard's header
// (a form on another site cannot send it). Failures come back as one line of text.
export const API = "/api/v1";

export class ApiError extends Error {}

async function reason(response) {
  const reply = await response.json().catch(() => ({}));
  return reply.error || `HTTP ${response.status}`;
}

export async function get(path, { signal } = {}) {
  const response = await fetch(API + path, { credentials: "same-origin", signal });
  if (!response.ok) throw new ApiError(await reason(response));
  return response.json();
}

export async function send(method, path, body = {}) {
  const response = await fetch(API + path, {
    method,
    headers: { "Content-Type": "application/json", "X-Buildcat-Dashboard": "1" },
    body: method === "DELETE" ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) throw new ApiError(await reason(response));
  return response.json().catch(() => ({}));
}

export const post = (path, body) => send("POST", path, body);
export const remove = (path) => send("DELETE", path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined && value !== false) search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// One EventSource: `update` events carry the farm's overview (workers, counts, the first
// jobs); the page reads its lists from the API when one says the farm changed.
export function live(onUpdate, onState) {
  const source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => onState(true));
  source.addEventListener("update", (event) => onUpdate(JSON.parse(event.data)));
  source.addEventListener("error", () => onState(false));
  return source;
}
