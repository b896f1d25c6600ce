// Answer cards: one streamed answer with its thumbs and comment, or a set of answers shown side
// by side in random order to rank best first (compare mode and the labeler queue).

import { sendRanking, sendThumbs } from "./api.js";
import { Ranking, shuffledOrder } from "./ranking.js";

/** An element with attributes (`text`: its text, `on…`: a listener) and children. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value);
  }
  element.append(...children);
  return element;
}

/**
 * What the cards need from the page: how to show an API failure, the criterion chosen, and the
 * comparison the keyboard shortcuts act on (the latest whose ranking is not sent).
 */
export const page = {
  report: (error) => { throw error; },
  criterion: () => "helpfulness",
  activeCompare: null,
};

// ----- one answer

export class Answer {
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
        criterion: page.criterion(),
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
      page.report(error);
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

export class AnswerSet {
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
    this.onSent = null; // called with the set once its ranking is accepted
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

  /** Show answers that are complete already: `[{completion_id, text, adapter}]` by choice. */
  fill(answers) {
    answers.forEach(({ completion_id: id, text, adapter }, choice) => {
      const answer = this.byChoice[choice];
      answer.start(id, adapter);
      answer.append(text);
      answer.finish("stop");
    });
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
    if (this.sent || this.submitButton.disabled) return; // sent, or being sent
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
        criterion: page.criterion(),
      });
      this.sent = true;
      this.element.dataset.eventId = accepted.event_id;
      this.element.classList.add("ranked");
      this.preview.textContent = `Ranking sent: ${this.ranking.describe()}`;
      this.warning.hidden = true;
      this.submitButton.hidden = this.resetButton.hidden = true;
      if (page.activeCompare === this) page.activeCompare = null;
      this.onSent?.(this);
    } catch (error) {
      this.submitButton.disabled = false;
      this.warning.textContent = `Not sent: ${error.detail ?? error}`;
      this.warning.hidden = false;
      page.report(error);
    }
  }
}
