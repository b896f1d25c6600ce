// The labeler queue (API keys with the labeler role): answer sets that need more judgements,
// one after another in the compare view, with the labeler's progress. `GET v1/labeling/next`
// reserves an item for a few minutes so that labelers working at once get different ones;
// `skip` drops the item just ranked (or skipped) from this labeler's queue. Progress counts a
// ranking once it reached the event log, about a second after it was sent.

import { AnswerSet, h, page } from "./answers.js";
import { request } from "./api.js";

const $ = (id) => document.getElementById(id);

let current = null; // the item shown

function describe(progress) {
  const agreement = progress.agreement === null
    ? "no pairs to compare yet"
    : `${Math.round(100 * progress.agreement)} % of ${progress.compared_pairs} pairs`;
  return `done today: ${progress.done_today} · remaining: ${progress.remaining} · `
    + `agreement with the other labelers: ${agreement}`;
}

function show(item) {
  current = item;
  $("queue-empty").hidden = item !== null;
  $("queue-skip").disabled = item === null;
  $("queue-prompt").replaceChildren(...(item?.messages ?? []).map((message) => h("li",
    { class: `turn ${message.role === "user" ? "user" : "assistant context"}` },
    h("div", { class: "bubble", text: message.content }))));
  if (item === null) {
    $("queue-item").replaceChildren();
    page.activeCompare = null;
    return;
  }
  const set = new AnswerSet(item.answers.length, true);
  set.fill(item.answers);
  set.element.dataset.itemId = item.item_id;
  set.onSent = () => next(item.item_id);
  $("queue-item").replaceChildren(set.element);
  page.activeCompare = set;
  set.element.focus();
}

/** Fetch the next item (after dropping `skip`) and show it; false if the API refused. */
async function next(skip = null) {
  let task;
  try {
    const query = skip ? `?skip=${encodeURIComponent(skip)}` : "";
    task = await request("GET", `v1/labeling/next${query}`);
  } catch (error) {
    page.report(error);
    return false;
  }
  $("queue-progress").textContent = describe(task.progress);
  $("queue").dataset.fetches = String(Number($("queue").dataset.fetches ?? 0) + 1);
  show(task.item);
  return true;
}

/** Switch from the chat to the queue (the chat stays as it was). */
export async function openQueue() {
  if (!(await next())) return;
  $("chat").hidden = true;
  $("queue").hidden = false;
  $("queue-skip").onclick = () => current && next(current.item_id);
}
