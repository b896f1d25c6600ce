// The chat page: sign in, a conversation with streamed answers, thumbs with an optional
// comment on every answer, compare mode (2–4 answers side by side, in random order, ranked
// best first with ties and "unusable" flags, sent as one ranking), keyboard shortcuts for
// ranking, and the labeler queue (queue.js).

import { AnswerSet, h, page } from "./answers.js";
import { ApiError, checkKey, loadConfig, session, streamChat } from "./api.js";
import { openQueue } from "./queue.js";

const $ = (id) => document.getElementById(id);

let config = null;
const turns = []; // {role: "user", content} or {role: "assistant", answers: AnswerSet}
let busy = false;
let chatCompare = null; // the chat's latest comparison not ranked yet

// ----- errors and sign-in

function showError(error) {
  $("error-text").textContent = error instanceof ApiError ? error.toString() : String(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

/** Show an API failure; a 401 means the key is missing or wrong: back to the login form. */
function report(error) {
  if (error instanceof ApiError && error.status === 401) {
    session.signOut();
    showLogin(error.detail);
  } else {
    showError(error);
  }
}

function showLogin(detail = "") {
  $("chat").hidden = true;
  $("queue").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-key").hidden = !config.auth;
  $("login-user").hidden = config.auth;
  $("login-detail").textContent = detail;
  $(config.auth ? "api-key" : "user-name").focus();
}

function showChat() {
  $("login").hidden = true;
  $("queue").hidden = true;
  $("chat").hidden = false;
  page.activeCompare = chatCompare;
  $("who").hidden = false;
  $("who-name").textContent = config.auth ? "signed in with an API key" : session.user;
  $("message").focus();
}

async function onLogin(event) {
  event.preventDefault();
  clearError();
  if (config.auth) {
    const key = $("api-key").value.trim();
    if (!key) return showLogin("Paste your API key.");
    try {
      await checkKey(key);
    } catch (error) {
      return showLogin(error instanceof ApiError ? error.detail : String(error));
    }
    $("api-key").value = "";
    session.signIn({ key });
  } else {
    const input = $("user-name");
    const user = input.value.trim();
    if (!user) return showLogin("Type a name.");
    if (!input.validity.valid) return showLogin("A name has letters, digits and . _ @ - only.");
    session.signIn({ user });
  }
  showChat();
}

// ----- the conversation

function history() {
  return turns.map((turn) => (turn.role === "user"
    ? { role: "user", content: turn.content }
    : { role: "assistant", content: turn.answers.chosen().text.textContent }));
}

function scrollDown() {
  window.scrollTo(0, document.body.scrollHeight);
}

async function onSend(event) {
  event.preventDefault();
  const content = $("message").value.trim();
  if (busy || !content) return;
  clearError();
  const compare = $("compare").checked;
  const n = compare ? Number($("compare-n").value) : 1;
  const messages = [...history(), { role: "user", content }];
  const question = h("li", { class: "turn user" }, h("div", { class: "bubble", text: content }));
  const set = new AnswerSet(n, compare);
  $("conversation").append(question, set.element);
  $("message").value = "";
  busy = $("send").disabled = true;
  scrollDown();
  try {
    await streamChat(messages, n, {
      onStart: ({ ids, adapter }) => set.start(ids, adapter),
      onDelta: (choice, text) => { set.byChoice[choice].append(text); scrollDown(); },
      onFinish: (choice, reason) => set.byChoice[choice].finish(reason),
    });
    turns.push({ role: "user", content }, { role: "assistant", answers: set });
    if (compare) {
      page.activeCompare = chatCompare = set;
      set.onSent = () => {
        if (chatCompare === set) chatCompare = null;
        $("message").focus();
      };
      set.element.focus();
    }
  } catch (error) {
    set.fail(error);
    $("message").value = content;
    report(error);
  } finally {
    busy = $("send").disabled = false;
    scrollDown();
  }
}

/** `1`–`4`, `t`, `u` and `Enter` act on the latest unsent comparison, outside text fields. */
function onKey(event) {
  const set = page.activeCompare;
  if (!set || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, textarea, select")) return;
  if (event.key === "Enter" && event.target.closest("button")) return; // Enter clicks it
  if (/^[1-9]$/.test(event.key) && Number(event.key) <= set.size) {
    set.act(set.pending ?? "pick", Number(event.key) - 1);
  } else if (event.key === "t" || event.key === "u") {
    set.pending = event.key === "t" ? "tie" : "unusable";
    set.render();
  } else if (event.key === "Escape") {
    set.pending = null;
    set.render();
  } else if (event.key === "Enter") {
    set.submit();
  } else {
    return;
  }
  event.preventDefault();
}

async function init() {
  $("login-form").addEventListener("submit", onLogin);
  $("composer").addEventListener("submit", onSend);
  $("error-close").addEventListener("click", clearError);
  $("sign-out").addEventListener("click", () => { session.signOut(); showLogin(); });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", onKey);
  $("queue-open").addEventListener("click", () => { clearError(); openQueue(); });
  $("queue-close").addEventListener("click", showChat);
  page.report = report;
  page.criterion = () => $("criterion").value;
  try {
    config = await loadConfig();
  } catch (error) {
    $("loading").textContent = "The gateway did not answer; reload the page to try again.";
    showError(error);
    return;
  }
  $("loading").hidden = true;
  for (let n = 2; n <= Math.min(4, config.max_n); n++) {
    $("compare-n").append(h("option", { value: String(n), text: `${n} answers` }));
  }
  $("compare").disabled = $("compare-n").disabled = config.max_n < 2;
  $("queue-open").hidden = !config.auth; // labelers are API keys with the labeler role
  if (config.auth && session.key) {
    try {
      await checkKey(session.key);
    } catch (error) {
      session.signOut();
      return showLogin(error instanceof ApiError ? error.detail : String(error));
    }
  }
  if (config.auth ? session.key : session.user) showChat();
  else showLogin();
}

init();
