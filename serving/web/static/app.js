// The chat page: sign in, a conversation with streamed answers, thumbs with an optional
// comment on every answer, and compare mode (2–4 answers side by side, in random order,
// ranked best first with ties and "unusable" flags, sent as one ranking).

import {
  ApiError, checkKey, loadConfig, sendRanking, sendThumbs, session, streamChat,
} from "./api.js";
import { Ranking, shuffledOrder } from "./ranking.js";

const $ = (id) => document.getElementById(id);

/** Create an element with attributes (`text` sets its text) and children. */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value);
  }
  element.append(...children);
  return element;
}

let config = null;
const turns = []; // {role: "user", content} or {role: "assistant", answers: AnswerSet}
let activeCompare = null; // the latest compare set whose ranking is not sent yet
let busy = false;

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
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-key").hidden = !config.auth;
  $("login-user").hidden = config.auth;
  $("login-detail").textContent = detail;
  $(config.auth ? "api-key" : "user-name").focus();
}

function showChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
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

// ----- one answer

class Answer {
  constructor(set, position) {
    this.set = set;
    this.position = position;
    this.id = null;
    this.vote = null;
    this.done = false;
    this.chunks = 0;
    this.text = h("div", { class: "text" });
    this.adapter = h("span", { class: "adapter", title: "the weights that served this answer" });
    this.status = h("span", { class: "status", "aria-live": "polite" });
    this.up = h("button", {
      type: "button", class: "vote up", "aria-label": "thumbs up", "aria-pressed": "false",
      disabled: "", text: "▲ good", onclick: () => this.sendVote("up"),
    });
    this.down = h("button", {
      type: "button", class: "vote down", "aria-label": "thumbs down", "aria-pressed": "false",
      disabled: "", text: "▼ bad", onclick: () => this.sendVote("down"),
    });
    this.comment = h("input", {
      class: "comment-text", maxlength: "4000", placeholder: "What was good or bad? (optional)",
    });
    this.commentForm = h("form", {
      class: "comment", hidden: "",
      onsubmit: (event) => { event.preventDefault(); this.sendComment(); },
    }, this.comment, h("button", { type: "submit", text: "send comment" }));
    const toggle = h("button", {
      type: "button", class: "link comment-toggle", text: "comment", onclick: () => {
        this.commentForm.hidden = !this.commentForm.hidden;
        if (!this.commentForm.hidden) this.comment.focus();
      },
    });
    this.element = h("article", { class: "answer", "data-position": String(position + 1) });
    if (set.compare) this.element.append(this.#rankHeader());
    const footer = h("footer", {}, this.up, this.down, toggle, this.status, this.adapter);
    this.element.append(this.text, footer, this.commentForm);
  }

  #rankHeader() {
    this.badge = h("span", { class: "badge" });
    const button = (kind, text, title) => h("button", {
      type: "button", class: `small rank-${kind}`, text, title,
      onclick: () => this.set.act(kind, this.position),
    });
    return h("header", {},
      h("kbd", { text: String(this.position + 1) }), this.badge, h("span", { class: "spacer" }),
      button("pick", "pick", "next best (key: its number)"),
      button("tie", "tie", "as good as the last pick (key: t, then its number)"),
      button("unusable", "unusable", "leave out of the ranking (key: u, then its number)"));
  }

  start(id, adapter) {
    this.id = id;
    this.element.dataset.completionId = id;
    this.adapter.textContent = adapter;
  }

  append(text) {
    this.text.textContent += text;
    this.chunks += 1;
    this.element.dataset.chunks = String(this.chunks);
  }

  finish(reason) {
    this.done = true;
    this.element.dataset.finished = reason;
    this.up.disabled = this.down.disabled = false;
  }

  async sendVote(vote, { commented = false } = {}) {
    const previous = this.vote;
    this.status.textContent = "saving…";
    try {
      const accepted = await sendThumbs({
        completionId: this.id, vote, comment: this.comment.value.trim(),
        criterion: $("criterion").value,
      });
      this.vote = vote;
      this.element.dataset.vote = vote;
      this.element.dataset.eventId = accepted.event_id;
      this.up.setAttribute("aria-pressed", String(vote === "up"));
      this.down.setAttribute("aria-pressed", String(vote === "down"));
      const changed = previous && previous !== vote;
      this.status.textContent = commented ? "comment saved" : changed ? "vote changed" : "saved";
    } catch (error) {
      this.status.textContent = "not saved";
      report(error);
    }
  }

  sendComment() {
    if (!this.comment.value.trim()) return;
    if (!this.vote) {
      this.status.textContent = "pick ▲ or ▼ first: the comment goes with your vote";
      return;
    }
    this.sendVote(this.vote, { commented: true });
  }
}

// ----- the answers to one message: one, or several to compare and rank

class AnswerSet {
  constructor(n, compare) {
    this.compare = compare;
    this.size = n;
    this.order = compare ? shuffledOrder(n) : [0]; // display position -> choice index
    this.answers = this.order.map((_, position) => new Answer(this, position));
    this.byChoice = [];
    this.order.forEach((choice, position) => { this.byChoice[choice] = this.answers[position]; });
    const grid = h("div", { class: compare ? "answers compare" : "answers" },
      ...this.answers.map((answer) => answer.element));
    grid.style.setProperty("--columns", String(n));
    this.element = h("li", { class: "turn assistant", tabindex: "-1" }, grid);
    if (compare) {
      this.ranking = new Ranking(n);
      this.pending = null; // "tie" or "unusable" after `t` / `u`, until a number follows
      this.warned = false;
      this.sent = false;
      this.preview = h("span", { class: "preview" });
      this.warning = h("span", { class: "warning", role: "alert", hidden: "" });
      this.submitButton = h("button", {
        type: "button", class: "rank-submit", text: "send ranking", onclick: () => this.submit(),
      });
      this.resetButton = h("button", {
        type: "button", class: "link", text: "reset", onclick: () => this.act("reset"),
      });
      this.element.append(h("div", { class: "rank-bar" }, this.preview, this.warning,
        h("span", { class: "spacer" }), this.resetButton, this.submitButton));
      this.render();
    }
  }

  start(ids, adapter) {
    this.byChoice.forEach((answer, choice) => answer.start(ids[choice], adapter));
  }

  get finished() {
    return this.answers.every((a) => a.done);
  }

  fail(error) {
    this.element.classList.add("failed");
    const text = `Not answered: ${error.detail ?? error}`;
    this.element.append(h("p", { class: "error-inline", text }));
  }

  /** The answer the conversation goes on with: the best ranked, else the first shown. */
  chosen() {
    if (this.compare && this.sent) return this.answers[this.ranking.complete()[0][0]];
    return this.answers[0];
  }

  act(kind, position) {
    if (this.sent) return;
    if (kind === "pick") this.ranking.pick(position);
    else if (kind === "tie") this.ranking.tie(position);
    else if (kind === "unusable") this.ranking.flagUnusable(position);
    else if (kind === "reset") this.ranking.reset();
    this.pending = null;
    this.warned = false;
    this.warning.hidden = true;
    this.submitButton.textContent = "send ranking";
    this.render();
    this.element.focus(); // so that the keyboard shortcuts go on working after a click
  }

  render() {
    const places = this.ranking.places();
    for (const answer of this.answers) {
      const place = places.get(answer.position) ?? "";
      answer.badge.textContent = !place || place === "unusable" ? place
        : place.startsWith("=") ? `#${place.slice(1)} tie` : `#${place}`;
      answer.element.dataset.place = place;
    }
    if (this.sent) return;
    const waiting = this.pending ? ` — ${this.pending}: press an answer's number` : "";
    this.preview.textContent = this.ranking.touched
      ? `Ranking: ${this.ranking.describe()}${waiting}`
      : `Rank the answers: press 1–${this.size} best first, t then a number to tie, `
        + `u then a number for unusable${waiting}`;
  }

  async submit() {
    if (this.sent) return;
    if (!this.finished) {
      this.warning.textContent = "Wait until every answer is complete.";
      this.warning.hidden = false;
      return;
    }
    if (!this.ranking.touched && !this.warned) {
      this.warned = true;
      this.warning.textContent = "You have not ranked these answers: sending now records them "
        + "as equally good. Press Enter again to send anyway.";
      this.warning.hidden = false;
      this.submitButton.textContent = "send anyway";
      return;
    }
    this.submitButton.disabled = true;
    try {
      const accepted = await sendRanking({
        ...this.ranking.toRequest((position) => this.answers[position].id),
        criterion: $("criterion").value,
      });
      this.sent = true;
      this.element.dataset.eventId = accepted.event_id;
      this.element.classList.add("ranked");
      this.preview.textContent = `Ranking sent: ${this.ranking.describe()}`;
      this.warning.hidden = true;
      this.submitButton.hidden = this.resetButton.hidden = true;
      if (activeCompare === this) activeCompare = null;
      $("message").focus();
    } catch (error) {
      this.submitButton.disabled = false;
      this.warning.textContent = `Not sent: ${error.detail ?? error}`;
      this.warning.hidden = false;
      report(error);
    }
  }
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
      activeCompare = set;
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
  const set = activeCompare;
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
