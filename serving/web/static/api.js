// The gateway's public API, as the chat page uses it: who is calling, JSON requests, and the
// streamed chat completion (server-sent events) read chunk by chunk.

const KEY = "hhh.apiKey";
const USER = "hhh.user";

/** An answer of the API other than 2xx: `status`, `code` and the API's `detail`. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
  toString() {
    return `${this.status}${this.code ? " " + this.code : ""}: ${this.detail}`;
  }
}

/** The caller, kept in this tab's session storage: an API key (auth on) or a user name. */
export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get user() { return sessionStorage.getItem(USER); },
  signIn({ key, user }) {
    if (key) sessionStorage.setItem(KEY, key);
    if (user) sessionStorage.setItem(USER, user);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(USER);
  },
};

let pageConfig = null;

/** `GET v1/hhh/config`: whether auth is on, the model name and the limits. */
export async function loadConfig() {
  pageConfig = await request("GET", "v1/hhh/config");
  return pageConfig;
}

function headers(json) {
  const result = json ? { "content-type": "application/json" } : {};
  if (session.key) result.authorization = `Bearer ${session.key}`;
  return result;
}

/** With auth off the `user` field names the caller; with auth on the key does. */
function withUser(body) {
  return pageConfig && !pageConfig.auth && session.user ? { ...body, user: session.user } : body;
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  let code = "";
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    code = body.error?.code ?? "";
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, detail);
}

async function send(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "network", `the gateway cannot be reached (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

/** A JSON request; resolves to the parsed body, rejects with an `ApiError`. */
export async function request(method, path, body) {
  const response = await send(method, path, body);
  return response.json();
}

/** Check an API key: `GET v1/models` answers 401 with the reason for a wrong one. */
export async function checkKey(key) {
  const response = await fetch("v1/models", { headers: { authorization: `Bearer ${key}` } });
  if (!response.ok) throw await failure(response);
}

/** `POST v1/feedback`: a thumbs vote (a changed vote supersedes the earlier one). */
export function sendThumbs({ completionId, vote, comment, criterion }) {
  const body = { completion_id: completionId, vote, criterion };
  if (comment) body.comment = comment;
  return request("POST", "v1/feedback", withUser(body));
}

/** `POST v1/rankings`: ids best first, ties as lists, and the ids flagged unusable. */
export function sendRanking({ ranking, unusable, criterion }) {
  return request("POST", "v1/rankings", withUser({ ranking, unusable, criterion }));
}

/**
 * Stream `n` answers to `messages`. `onStart({ids, adapter})` runs once the headers are in;
 * `onDelta(index, text)` for each piece of text of choice `index`; `onFinish(index, reason)`
 * when a choice ends. Resolves when the stream ends; rejects with an `ApiError`, including for
 * an error the engine reports mid-stream.
 */
export async function streamChat(messages, n, { onStart, onDelta, onFinish }) {
  const response = await send("POST", "v1/chat/completions",
    withUser({ model: pageConfig.model, messages, n, stream: true }));
  onStart({
    ids: (response.headers.get("x-hhh-completion-ids") || "").split(","),
    adapter: response.headers.get("x-hhh-adapter") || "",
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          throw new ApiError(chunk.error.code || 502, chunk.error.type || "", chunk.error.message);
        }
        for (const choice of chunk.choices || []) {
          const text = choice.delta?.content;
          if (text) onDelta(choice.index, text);
          if (choice.finish_reason) onFinish(choice.index, choice.finish_reason);
        }
      }
    }
  }
  throw new ApiError(502, "stream_cut", "the answer stream ended before it was complete");
}
